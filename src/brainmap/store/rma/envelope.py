"""Allen's response envelopes: JSON, XML and CSV.

* JSON: ``{"success": true, "id": 0, "start_row": 0, "num_rows": 2, "total_rows": 2, "msg": [...]}``; an error is
  ``{"success": false, "id": -1, ..., "msg": "<what is wrong>", "error": {"type", "position", "expected"}}``.
* XML, as Rails writes it (Allen's API is Rails)::

      <Response success="true" id="0" start_row="0" num_rows="1" total_rows="1">
        <structures><structure><id type="integer">385</id><acronym>VISp</acronym>...</structure></structures>
      </Response>

  names dasherized (``structure-id-path``), typed values (``type="integer" | "float" | "boolean"``), null as
  ``nil="true"``, included associations nested as elements.
* CSV: a header line and one line per row (tabular results as they are; nested rows flattened: a to-one
  association's attributes as ``association.attribute``, collections left out).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

from brainmap.store.rma.compiler import RmaResult
from brainmap.store.rma.parser import RmaError, RmaUnknownNameError

__all__ = ["CONTENT_TYPES", "error_envelope", "json_envelope", "render", "render_error", "to_csv", "to_xml"]

CONTENT_TYPES = {"json": "application/json", "xml": "application/xml", "csv": "text/csv"}

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def json_envelope(result: RmaResult, request_id: int = 0) -> dict[str, Any]:
    """Allen's JSON envelope around a result."""
    return {"success": True, "id": request_id, "start_row": result.start_row, "num_rows": result.num_rows,
            "total_rows": result.total_rows, "msg": result.rows}


def error_envelope(error: Exception, request_id: int = -1) -> dict[str, Any]:
    """Allen's envelope for a failed query; RMA errors carry the position and what was expected."""
    detail: dict[str, Any] = {"type": type(error).__name__}
    if isinstance(error, RmaError):
        detail["position"] = error.position
        expected = getattr(error, "expected", None)
        if expected is not None:
            detail["expected"] = expected
        if isinstance(error, RmaUnknownNameError):
            detail["name"] = error.name
            detail["valid"] = error.valid
    return {"success": False, "id": request_id, "start_row": 0, "num_rows": 0, "total_rows": 0,
            "msg": str(error), "error": detail}


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _dasherize(name: str) -> str:
    return name.replace("_", "-")


def _singular(table_name: str) -> str:
    if table_name.endswith("ies"):
        return table_name[:-3] + "y"
    if table_name.endswith("ses"):
        return table_name[:-2]
    return table_name[:-1] if table_name.endswith("s") else table_name


def _xml_text(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", str(value))


def _xml_value(parent: ET.Element, key: str, value: Any) -> None:
    element = ET.SubElement(parent, _dasherize(key))
    if isinstance(value, dict):
        for k, v in value.items():
            _xml_value(element, k, v)
    elif isinstance(value, list):
        element.set("type", "array")
        child_name = _singular(key)
        for item in value:
            if isinstance(item, dict):
                row = ET.SubElement(element, _dasherize(child_name))
                for k, v in item.items():
                    _xml_value(row, k, v)
            else:
                _xml_value(element, child_name, item)
    elif value is None or (isinstance(value, float) and not math.isfinite(value)):
        element.set("nil", "true")
    elif isinstance(value, bool):
        element.set("type", "boolean")
        element.text = "true" if value else "false"
    elif isinstance(value, int):
        element.set("type", "integer")
        element.text = str(value)
    elif isinstance(value, float):
        element.set("type", "float")
        element.text = repr(value)
    else:
        element.text = _xml_text(value)


def to_xml(result: RmaResult, request_id: int = 0) -> str:
    """The XML document of a result."""
    response = ET.Element("Response", {"success": "true", "id": str(request_id), "start_row": str(result.start_row),
                                       "num_rows": str(result.num_rows), "total_rows": str(result.total_rows)})
    table = result.table_name or "rows"
    rows_element = ET.SubElement(response, _dasherize(table))
    for row in result.rows:
        element = ET.SubElement(rows_element, _dasherize(_singular(table)))
        for key, value in row.items():
            _xml_value(element, key, value)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(response, encoding="unicode")


def _error_xml(error: Exception, request_id: int) -> str:
    envelope = error_envelope(error, request_id)
    response = ET.Element("Response", {"success": "false", "id": str(request_id), "start_row": "0",
                                       "num_rows": "0", "total_rows": "0"})
    ET.SubElement(response, "message").text = _xml_text(envelope["msg"])
    for key, value in envelope["error"].items():
        if value is not None:
            ET.SubElement(response, _dasherize(key)).text = _xml_text(
                ",".join(map(str, value)) if isinstance(value, list) else value)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(response, encoding="unicode")


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            continue
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_csv(result: RmaResult) -> str:
    """CSV text: a header and one line per row (see the module docstring)."""
    rows = [_flatten(r) for r in result.rows]
    header = list(result.columns) if result.columns else list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else
                         ("true" if row[k] is True else "false" if row[k] is False else row[k]) for k in header])
    return buffer.getvalue()


def render(result: RmaResult, fmt: str = "json", request_id: int = 0) -> tuple[str, str]:
    """``(body, content type)`` of a result in ``json``, ``xml`` or ``csv``."""
    if fmt == "json":
        return json.dumps(_finite(json_envelope(result, request_id)), default=_json_default), CONTENT_TYPES["json"]
    if fmt == "xml":
        return to_xml(result, request_id), CONTENT_TYPES["xml"]
    if fmt == "csv":
        return to_csv(result), CONTENT_TYPES["csv"]
    raise ValueError(f"unknown format {fmt!r}; use json, xml or csv")


def render_error(error: Exception, fmt: str = "json", request_id: int = -1) -> tuple[str, str]:
    """``(body, content type)`` of an error (CSV errors are sent as JSON)."""
    if fmt == "xml":
        return _error_xml(error, request_id), CONTENT_TYPES["xml"]
    return json.dumps(error_envelope(error, request_id), default=str), CONTENT_TYPES["json"]
