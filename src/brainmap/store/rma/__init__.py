"""rma: Allen's RMA query language.

- :mod:`~brainmap.store.rma.parser` -- :func:`parse_rma` -> :class:`RmaQuery` (model stages, service calls,
  pipes), with :class:`RmaSyntaxError` / :class:`RmaUnknownNameError` carrying the position of the problem;
- :mod:`~brainmap.store.rma.compiler` -- :func:`execute_rma` / :func:`compile_stage`: a model stage as
  parameterized SQL over the whitelist of :func:`registry` (examples that run are in its docstring);
- :mod:`~brainmap.store.rma.envelope` -- Allen's JSON envelope, XML and CSV (:func:`render`, :func:`render_error`).

Every RMA error is an :class:`RmaError`, a ``ValueError``: a server answers it with HTTP 400 and
:func:`render_error`.
"""

from brainmap.store.rma.compiler import (
    DEFAULT_MAX_ROWS,
    DEFAULT_NUM_ROWS,
    CompiledQuery,
    Registry,
    RmaResult,
    compile_stage,
    execute_rma,
    registry,
)
from brainmap.store.rma.envelope import error_envelope, json_envelope, render, render_error
from brainmap.store.rma.parser import (
    Filter,
    ModelStage,
    Options,
    PathNode,
    PipeCall,
    RmaError,
    RmaLimitError,
    RmaQuery,
    RmaSyntaxError,
    RmaUnknownNameError,
    RmaValueError,
    ServiceCall,
    Value,
    parse_criteria,
    parse_include,
    parse_options,
    parse_rma,
    parse_rma_params,
)

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_NUM_ROWS",
    "CompiledQuery",
    "Filter",
    "ModelStage",
    "Options",
    "PathNode",
    "PipeCall",
    "Registry",
    "RmaError",
    "RmaLimitError",
    "RmaQuery",
    "RmaResult",
    "RmaSyntaxError",
    "RmaUnknownNameError",
    "RmaValueError",
    "ServiceCall",
    "Value",
    "compile_stage",
    "error_envelope",
    "execute_rma",
    "json_envelope",
    "parse_criteria",
    "parse_include",
    "parse_options",
    "parse_rma",
    "parse_rma_params",
    "registry",
    "render",
    "render_error",
]
