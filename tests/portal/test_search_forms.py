"""Every search form offers every parameter of its service (a parameter added to a service without a form input
fails here), read from the forms a real ``brainmap serve`` renders; every service has a search page."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from brainmap.server.portal.search_pages import PAGES
from brainmap.server.routes_services import SERVICES

httpx = pytest.importorskip("httpx")


class _FormInputs(HTMLParser):
    """The names of the inputs and selects inside ``<form id="search-form">`` (but hidden ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.names: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form" and values.get("id") == "search-form":
            self.inside = True
        elif self.inside and tag in ("input", "select", "textarea") and values.get("name") \
                and values.get("type") != "hidden":  # hidden: the page's view (AGEA's plane), not the service's
            self.names.append(str(values["name"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False


def test_every_service_has_a_search_page():
    assert sorted(p.service for p in PAGES.values()) == sorted(SERVICES)


@pytest.mark.parametrize("slug", sorted(PAGES))
def test_the_form_has_an_input_for_each_service_parameter(empty_portal, slug):
    answer = httpx.get(f"{empty_portal}/search/{slug}", timeout=30)
    assert answer.status_code == 200
    parser = _FormInputs()
    parser.feed(answer.text)
    service = SERVICES[PAGES[slug].service]
    expected = sorted(p.name for p in service.params)
    assert sorted(parser.names) == expected, f"{slug}: the form's inputs against {service.name}'s parameters"
