"""The SDK: AllenSDK-compatible APIs and caches over a brainmap server or Allen's public API.

Code written for AllenSDK switches by changing its imports::

    from brainmap.sdk import MouseConnectivityCache          # was allensdk.core.mouse_connectivity_cache

    mcc = MouseConnectivityCache(resolution=100)              # the local brainmap server (brainmap serve)
    mcc = MouseConnectivityCache(resolution=100, base_uri="http://api.brain-map.org")   # Allen's

APIs (HTTP clients): :class:`RmaApi`, :class:`GridDataApi`, :class:`ReferenceSpaceApi`,
:class:`MouseConnectivityApi`, :class:`OntologiesApi`, :class:`SynchronizationApi`, :class:`MouseIshApi`,
:class:`MouseAtlasApi`, :class:`ImageDownloadApi`, :class:`SvgApi`.
Caches (files under a manifest, verified, atomic, resumable, process-safe, with an offline mode):
:class:`ReferenceSpaceCache`, :class:`MouseConnectivityCache`, :class:`MouseIshCache`. The spatial search
lines workflow is :mod:`brainmap.sdk.spatial_lines`. The SDK is a client only: it talks HTTP and never imports
the server or the database.
"""

from brainmap.sdk.connectivity_api import MouseConnectivityApi
from brainmap.sdk.connectivity_cache import MouseConnectivityCache
from brainmap.sdk.download import DownloadResult, Downloader
from brainmap.sdk.errors import ApiError, CacheError, ChecksumError, DownloadError, OfflineError, SdkError
from brainmap.sdk.grid_data import GridDataApi, ReferenceSpaceApi
from brainmap.sdk.http import ALLEN_API_URL, DEFAULT_BASE_URI, HttpClient
from brainmap.sdk.images import ImageDownloadApi, SvgApi
from brainmap.sdk.ish import MouseAtlasApi, MouseIshApi, MouseIshCache
from brainmap.sdk.ontologies import OntologiesApi
from brainmap.sdk.reference_space_cache import ReferenceSpaceCache
from brainmap.sdk.rma import Api, RmaApi
from brainmap.sdk.synchronization import SynchronizationApi

__all__ = [
    "ImageDownloadApi",
    "MouseAtlasApi",
    "SvgApi",
    "ALLEN_API_URL",
    "DEFAULT_BASE_URI",
    "Api",
    "ApiError",
    "CacheError",
    "ChecksumError",
    "DownloadError",
    "DownloadResult",
    "Downloader",
    "GridDataApi",
    "HttpClient",
    "MouseConnectivityApi",
    "MouseConnectivityCache",
    "MouseIshApi",
    "MouseIshCache",
    "OfflineError",
    "OntologiesApi",
    "ReferenceSpaceApi",
    "ReferenceSpaceCache",
    "RmaApi",
    "SdkError",
    "SynchronizationApi",
]
