"""Allen's RMA query language: a hand-written recursive-descent parser producing a small AST.

Grammar (whitespace is allowed around commas and between items; inside a filter only within quotes and inside
a bare value, where it is trimmed)::

    query      := stage_item ("," stage_item)*
    stage_item := AXIS "::" NAME filters?          -- model::Gene  rma::criteria  rma::include  rma::options[..]
                                                   -- service::mouse_differential[..]  pipe::list[..]
                | path                             -- an item of the current criteria / include list
    path       := IDENT filters? ("(" path ("," path)* ")")?
                | filters                          -- filters on the stage's own model: [failed$eqfalse]
    filters    := ("[" filter "]")+
    filter     := NAME (OP value)?                 -- no operator and no value: an existence test (NOT NULL)
    NAME       := IDENT ("." IDENT)*               -- an attribute, optionally qualified: genes.acronym
    OP         := "$eq" | "$ne" | "$lt" | "$le" | "$gt" | "$ge" | "$in" | "$li" | "$il" | "$is"
    value      := atom ("," atom)*                 -- several atoms for $in and service parameters
    atom       := "'" chars "'" | '"' chars '"'    -- a quote inside is doubled: 'O''Brien'
                | bare                             -- any run of characters but , [ ] ( ) ' " (trimmed)

A query holds one or more *stages*: a model stage (``model::X`` followed by ``rma::criteria``,
``rma::include`` and ``rma::options`` sections; items written straight after ``model::X`` count as criteria,
as in the legacy ``model::Gene[id$eq15]``), a service call (``service::NAME[param$eqvalue]...``) or a pipe
(``pipe::NAME[...]``). Every node records its offset in the query text, so that later errors (an unknown
attribute, a value of the wrong type) can say where they are.

Errors are :class:`RmaSyntaxError` (malformed text: position and what was expected) and
:class:`RmaUnknownNameError` (an unknown axis, option or operator, with the valid names). Both are
``ValueError``\\ s that a server answers with HTTP 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

from brainmap.errors import BrainmapError

__all__ = [
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "MAX_VALUES",
    "OPERATORS",
    "OPTION_NAMES",
    "Filter",
    "ModelStage",
    "Options",
    "OrderItem",
    "PathNode",
    "PipeCall",
    "RmaError",
    "RmaLimitError",
    "RmaQuery",
    "RmaSyntaxError",
    "RmaUnknownNameError",
    "RmaValueError",
    "ServiceCall",
    "TabularItem",
    "Value",
    "parse_include",
    "parse_criteria",
    "parse_options",
    "parse_rma",
    "parse_rma_params",
]

#: Longest query text accepted (characters).
MAX_QUERY_LENGTH = 20_000
#: Deepest nesting of parentheses accepted.
MAX_DEPTH = 12
#: Most atoms one value may hold (an ``$in`` list).
MAX_VALUES = 5_000

#: The filter operators and what they mean.
OPERATORS = {
    "eq": "equal",
    "ne": "not equal",
    "lt": "less than",
    "le": "less or equal",
    "gt": "greater than",
    "ge": "greater or equal",
    "in": "in a comma-separated list",
    "li": "LIKE, case-sensitive, * as wildcard",
    "il": "LIKE, case-insensitive, * as wildcard",
    "is": "IS null / true / false",
}

#: The ``rma::options`` Allen defines (``debug`` is accepted and ignored).
OPTION_NAMES = ("num_rows", "start_row", "order", "only", "except", "tabular", "count", "debug")

_AXES = ("model", "rma", "service", "pipe")
_RMA_SECTIONS = ("criteria", "include", "options")
_BARE_STOP = set(",[]()'\"")


# -- errors ---------------------------------------------------------------------------------------------------
class RmaError(BrainmapError, ValueError):
    """A query that cannot be answered as written (HTTP 400). ``position`` is a 0-based offset or None."""

    def __init__(self, message: str, position: int | None = None, text: str | None = None) -> None:
        self.message = message
        self.position = position
        self.text = text
        super().__init__(self._format())

    def _format(self) -> str:
        if self.position is None:
            return self.message
        where = f"at position {self.position}"
        if self.text:
            snippet = self.text[self.position:self.position + 30]
            where += f" ({snippet!r})" if snippet else " (the end of the query)"
        return f"{self.message} {where}"

    def __str__(self) -> str:
        return self._format()


class RmaSyntaxError(RmaError):
    """Malformed query text. ``expected`` says what the parser wanted at ``position``."""

    def __init__(self, expected: str, position: int, text: str, found: str | None = None) -> None:
        self.expected = expected
        if found is None:
            found = repr(text[position]) if position < len(text) else "the end of the query"
        self.found = found
        super().__init__(f"RMA syntax error: expected {expected}, found {found}", position, text)


class RmaUnknownNameError(RmaError, LookupError):
    """An unknown model, attribute, association, axis, option or operator; ``valid`` lists the known names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], position: int | None = None,
                 text: str | None = None, context: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(set(valid))
        self.expected = f"one of the {kind}s " + ", ".join(self.valid)
        on = f" of {context}" if context else ""
        listed = ", ".join(self.valid) if self.valid else "(none)"
        super().__init__(f"unknown {kind} {name!r}{on}; valid {kind}s: {listed}", position, text)

    def __str__(self) -> str:  # LookupError would repr() the message
        return self._format()


class RmaValueError(RmaError):
    """A value of the wrong kind for its attribute or option (a word where a number is needed, ...)."""

    def __init__(self, message: str, position: int | None = None, text: str | None = None,
                 expected: str | None = None) -> None:
        self.expected = expected
        super().__init__(message, position, text)


class RmaLimitError(RmaError):
    """The query asks for more than the server allows (rows, nesting, query length, list length)."""

    def __init__(self, message: str, position: int | None = None, text: str | None = None,
                 expected: str | None = None) -> None:
        self.expected = expected
        super().__init__(message, position, text)


# -- the AST --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    """The right-hand side of a filter: one or more atoms (``$in`` lists, service parameters)."""

    atoms: tuple[str, ...]
    quoted: tuple[bool, ...]
    position: int
    raw: str

    @property
    def single(self) -> str:
        """The only atom; callers check ``len(atoms) == 1`` first."""
        return self.atoms[0]


@dataclass(frozen=True)
class Filter:
    """``[name$op value]``; ``op`` and ``value`` are None for an existence test ``[name]``."""

    name: str
    op: str | None
    value: Value | None
    position: int

    @property
    def qualifier(self) -> str | None:
        """``genes`` of ``genes.acronym`` (everything before the last dot), or None."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else None

    @property
    def attribute(self) -> str:
        """``acronym`` of ``genes.acronym``."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class PathNode:
    """An association with its filters and nested associations; ``name`` None: filters on the enclosing model."""

    name: str | None
    filters: tuple[Filter, ...]
    children: tuple["PathNode", ...]
    position: int

    def has_filters(self) -> bool:
        """Whether this node or any node below it filters."""
        return bool(self.filters) or any(child.has_filters() for child in self.children)


@dataclass(frozen=True)
class OrderItem:
    """``attr``, ``table.attr``, ``assoc.attr`` with a direction."""

    name: str
    descending: bool
    position: int


@dataclass(frozen=True)
class TabularItem:
    """A tabular column ``[qualifier.]attr [as title]``."""

    name: str
    title: str
    position: int


@dataclass(frozen=True)
class Options:
    """``rma::options``: ``num_rows`` (an int or ``"all"``; None = the default), ``start_row``, ``order``,
    ``only``, ``except_``, ``tabular``, ``count`` and ``debug``; ``positions`` maps option -> offset."""

    num_rows: int | str | None = None
    start_row: int | None = None
    order: tuple[OrderItem, ...] = ()
    only: tuple[tuple[str, int], ...] = ()
    except_: tuple[tuple[str, int], ...] = ()
    tabular: tuple[TabularItem, ...] = ()
    count: bool | None = None
    debug: str | None = None
    positions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelStage:
    """``model::Name`` with its criteria (filters on itself and on association paths), includes and options."""

    model: str
    criteria: tuple[PathNode, ...]
    include: tuple[PathNode, ...]
    options: Options
    position: int


@dataclass(frozen=True)
class ServiceCall:
    """``service::name[param$eqvalue]...``: parsed here, dispatched by the server."""

    name: str
    params: tuple[Filter, ...]
    options: Options
    position: int

    def param(self, name: str) -> Value | None:
        """The value of a parameter (the last one given), or None."""
        found = None
        for p in self.params:
            if p.name == name:
                found = p.value
        return found

    def as_dict(self) -> dict[str, list[str]]:
        """Parameter name -> its atoms (an existence-only parameter maps to [])."""
        return {p.name: list(p.value.atoms) if p.value is not None else [] for p in self.params}


@dataclass(frozen=True)
class PipeCall:
    """``pipe::name[...]``: parsed here, dispatched by the server."""

    name: str
    params: tuple[Filter, ...]
    position: int


Stage = Union[ModelStage, ServiceCall, PipeCall]


@dataclass(frozen=True)
class RmaQuery:
    """A parsed query: its stages in order, and the text they came from."""

    stages: tuple[Stage, ...]
    text: str

    @property
    def model_stage(self) -> ModelStage | None:
        """The first model stage, or None."""
        return next((s for s in self.stages if isinstance(s, ModelStage)), None)


# -- the parser -----------------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, offset: int = 0) -> None:
        if not isinstance(text, str):
            raise RmaValueError(f"an RMA query must be text, got {type(text).__name__}")
        if len(text) > MAX_QUERY_LENGTH:
            raise RmaLimitError(f"the query is {len(text):,} characters long; at most {MAX_QUERY_LENGTH:,} are "
                                "accepted", 0, None, expected=f"at most {MAX_QUERY_LENGTH} characters")
        for i, ch in enumerate(text):
            if ord(ch) < 32 and ch not in "\t\n\r" or ord(ch) == 127:
                raise RmaSyntaxError("printable text", i, text, found=f"the control character {ch!r}")
        self.text = text
        self.pos = 0
        self.depth = 0

    # low-level
    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def error(self, expected: str, found: str | None = None, position: int | None = None) -> RmaSyntaxError:
        return RmaSyntaxError(expected, self.pos if position is None else position, self.text, found)

    def expect(self, ch: str, expected: str | None = None) -> None:
        if self.peek() != ch:
            raise self.error(expected or repr(ch))
        self.pos += 1

    def ident(self, expected: str) -> str:
        start = self.pos
        ch = self.peek()
        if not (ch.isascii() and (ch.isalpha() or ch == "_")):
            raise self.error(expected)
        self.pos += 1
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                self.pos += 1
            else:
                break
        return self.text[start:self.pos]

    def dotted_name(self, expected: str) -> str:
        parts = [self.ident(expected)]
        while self.peek() == ".":
            self.pos += 1
            parts.append(self.ident("a name after '.'"))
        return ".".join(parts)

    # values
    def quoted(self) -> str:
        quote = self.peek()
        start = self.pos
        self.pos += 1
        out = []
        while True:
            if self.at_end():
                raise self.error(f"a closing {quote} for the string opened at position {start}")
            ch = self.text[self.pos]
            if ch == quote:
                if self.text[self.pos + 1:self.pos + 2] == quote:  # doubled quote: a literal quote
                    out.append(quote)
                    self.pos += 2
                    continue
                self.pos += 1
                return "".join(out)
            out.append(ch)
            self.pos += 1

    def value(self) -> Value:
        start = self.pos
        atoms: list[str] = []
        quoted: list[bool] = []
        while True:
            ch = self.peek()
            if ch in ("'", '"'):
                atoms.append(self.quoted())
                quoted.append(True)
                while self.peek() and self.peek() in " \t":
                    self.pos += 1
            else:
                atom_start = self.pos
                while not self.at_end() and self.text[self.pos] not in _BARE_STOP:
                    self.pos += 1
                atom = self.text[atom_start:self.pos].strip()
                if not atom:
                    raise self.error("a value (a number, a word or a 'quoted string')", position=atom_start)
                atoms.append(atom)
                quoted.append(False)
            if len(atoms) > MAX_VALUES:
                raise RmaLimitError(f"a value may hold at most {MAX_VALUES:,} items", start, self.text,
                                    expected=f"at most {MAX_VALUES} items")
            if self.peek() == ",":
                self.pos += 1
                while self.peek() and self.peek() in " \t":
                    self.pos += 1
                continue
            if self.peek() != "]":
                raise self.error("',' or ']' after a value")
            return Value(tuple(atoms), tuple(quoted), start, self.text[start:self.pos])

    def filter(self) -> Filter:
        open_pos = self.pos
        self.expect("[")
        start = self.pos
        name = self.dotted_name("an attribute name after '['")
        op = value = None
        if self.peek() == "$":
            op_pos = self.pos
            self.pos += 1
            # Operators are two letters, and a bare value follows at once: [failed$eqfalse], [id$in5,31].
            op = self.text[self.pos:self.pos + 2]
            if op not in OPERATORS:
                word = re.match(r"[A-Za-z_]*", self.text[self.pos:]).group(0)[:12]  # type: ignore[union-attr]
                raise RmaUnknownNameError("operator", "$" + (word or op), ["$" + o for o in OPERATORS], op_pos,
                                          self.text)
            self.pos += 2
            value = self.value()
        elif self.peek() != "]":
            raise self.error("an operator ($eq, $ne, $lt, $le, $gt, $ge, $in, $li, $il, $is) or ']'")
        self.expect("]", "']' closing the filter opened at position %d" % open_pos)
        return Filter(name, op, value, start)

    def filters(self) -> tuple[Filter, ...]:
        out = []
        while self.peek() == "[":
            out.append(self.filter())
        return tuple(out)

    # paths
    def path(self) -> PathNode:
        start = self.pos
        if self.peek() == "[":
            return PathNode(None, self.filters(), (), start)
        name = self.ident("an association name, '[' or an axis such as model::, rma::, service::, pipe::")
        filters = self.filters()
        children: tuple[PathNode, ...] = ()
        if self.peek() == "(":
            open_pos = self.pos
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise RmaLimitError(f"associations nest at most {MAX_DEPTH} levels deep", self.pos, self.text,
                                    expected=f"at most {MAX_DEPTH} levels")
            self.pos += 1
            items = []
            while True:
                self.skip_ws()
                items.append(self.path())
                self.skip_ws()
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect(")", f"',' or ')' closing the '(' at position {open_pos}")
                break
            self.depth -= 1
            children = tuple(items)
        return PathNode(name, filters, children, start)

    # top level
    def items(self) -> list[tuple[str, int, object]]:
        """The top-level items: ("axis", pos, (axis, name, filters)) or ("path", pos, PathNode)."""
        out: list[tuple[str, int, object]] = []
        self.skip_ws()
        if self.at_end():
            raise self.error("a query such as model::Structure or service::NAME")
        while True:
            self.skip_ws()
            start = self.pos
            if self.peek() != "[" and self.text.find("::", self.pos) != -1 and self._axis_ahead():
                axis = self.ident("an axis")
                if axis not in _AXES:
                    raise RmaUnknownNameError("axis", axis + "::", [a + "::" for a in _AXES], start, self.text)
                self.pos += 2
                name = self.ident(f"a name after {axis}::")
                filters = self.filters()
                out.append(("axis", start, (axis, name, filters)))
            else:
                out.append(("path", start, self.path()))
            self.skip_ws()
            if self.at_end():
                return out
            self.expect(",", "',' between items or the end of the query")

    def _axis_ahead(self) -> bool:
        j = self.pos
        while j < len(self.text) and (self.text[j].isascii() and (self.text[j].isalnum() or self.text[j] == "_")):
            j += 1
        return j > self.pos and self.text.startswith("::", j)


def _options(entries: Sequence[Filter], text: str) -> Options:
    """Validate the ``rma::options`` filters into :class:`Options`."""
    values: dict[str, object] = {}
    positions: dict[str, int] = {}
    for entry in entries:
        name = entry.name
        if name == "excpt":  # AllenSDK spells it both ways
            name = "except"
        if name not in OPTION_NAMES:
            raise RmaUnknownNameError("option", entry.name, OPTION_NAMES, entry.position, text)
        if entry.op != "eq" or entry.value is None:
            raise RmaSyntaxError(f"'$eq' and a value for the option {name}", entry.position + len(entry.name),
                                 text)
        value = entry.value
        positions[name] = entry.position
        if name in ("num_rows", "start_row"):
            if len(value.atoms) != 1:
                raise RmaSyntaxError("one number", value.position, text)
            atom = value.single.strip()
            if name == "num_rows" and atom.lower() == "all":
                values[name] = "all"
                continue
            if not atom.isdigit():
                wanted = "a non-negative integer or 'all'" if name == "num_rows" else "a non-negative integer"
                raise RmaValueError(f"{name} must be {wanted}, got {atom!r}", value.position, text, expected=wanted)
            if len(atom) > 12:
                raise RmaLimitError(f"{name} {atom} is too large", value.position, text,
                                    expected="a number below 10^12")
            values[name] = int(atom)
        elif name in ("count", "debug"):
            atom = ",".join(value.atoms).strip().lower()
            if name == "count":
                if atom not in ("true", "false"):
                    raise RmaValueError(f"count must be true or false, got {atom!r}", value.position, text,
                                        expected="true or false")
                values[name] = atom == "true"
            else:
                if atom not in ("true", "false", "preview"):
                    raise RmaValueError(f"debug must be true, false or 'preview', got {atom!r}", value.position,
                                        text, expected="true, false or 'preview'")
                values[name] = atom
        elif name == "order":
            values[name] = tuple(_order_item(atom, value, text) for atom in _split_list(value))
        elif name in ("only", "except"):
            items = []
            for atom in _split_list(value):
                _check_dotted(atom, value, text)
                items.append((atom, value.position))
            values[name] = tuple(items)
        elif name == "tabular":
            values[name] = tuple(_tabular_item(atom, value, text) for atom in _split_list(value))
    return Options(
        num_rows=values.get("num_rows"), start_row=values.get("start_row"), order=values.get("order", ()),
        only=values.get("only", ()), except_=values.get("except", ()), tabular=values.get("tabular", ()),
        count=values.get("count"), debug=values.get("debug"), positions=positions,
    )


def _split_list(value: Value) -> list[str]:
    """Atoms of an option list; a quoted atom may itself hold a comma list (``'id,name'``)."""
    out = []
    for atom in value.atoms:
        out.extend(part.strip() for part in atom.split(",") if part.strip())
    return out


def _check_dotted(name: str, value: Value, text: str) -> None:
    parts = name.split(".")
    if not all(p and (p[0].isalpha() or p[0] == "_") and p.replace("_", "a").isalnum() and p.isascii()
               for p in parts):
        raise RmaSyntaxError("an attribute name such as acronym or structures.acronym", value.position, text,
                             found=repr(name))


def _order_item(atom: str, value: Value, text: str) -> OrderItem:
    """``name``, ``name$desc``, ``name desc``, ``name+desc`` (and ``asc``)."""
    name, descending = atom, False
    for separator in ("$", " ", "+"):
        if separator in atom:
            name, direction = atom.rsplit(separator, 1)
            direction = direction.strip().lower()
            if direction not in ("asc", "desc"):
                raise RmaValueError(f"order direction must be asc or desc, got {direction!r}", value.position,
                                    text, expected="asc or desc")
            descending = direction == "desc"
            name = name.strip()
            break
    _check_dotted(name, value, text)
    return OrderItem(name, descending, value.position)


def _tabular_item(atom: str, value: Value, text: str) -> TabularItem:
    """``name`` or ``name as title`` (``+as+`` decodes to spaces)."""
    words = atom.replace("+", " ").split()
    if len(words) == 3 and words[1].lower() == "as":
        name, title = words[0], words[2]
    elif len(words) == 1:
        name, title = words[0], words[0]
    else:
        raise RmaSyntaxError("a tabular column 'name' or 'name as title'", value.position, text, found=repr(atom))
    _check_dotted(name, value, text)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", title):
        raise RmaSyntaxError("a column title of letters, digits, '_' and '.'", value.position, text,
                             found=repr(title))
    return TabularItem(name, title, value.position)


def parse_rma(text: str) -> RmaQuery:
    """Parse an RMA query (the ``q=`` / ``criteria=`` text of ``/api/v2/data/query.json``).

    Raises :class:`RmaSyntaxError`, :class:`RmaUnknownNameError`, :class:`RmaValueError` or
    :class:`RmaLimitError`, all ``ValueError``\\ s with the position of the problem.
    """
    parser = _Parser(text)
    items = parser.items()
    stages: list[Stage] = []
    # The stage being built: [kind, name, position, section, criteria, include, options-filters].
    current: dict | None = None

    def finish() -> None:
        if current is None:
            return
        options = _options(current["options"], text)
        if current["kind"] == "model":
            stages.append(ModelStage(current["name"], tuple(current["criteria"]), tuple(current["include"]),
                                     options, current["position"]))
        elif current["kind"] == "service":
            stages.append(ServiceCall(current["name"], tuple(current["params"]), options, current["position"]))
        else:
            stages.append(PipeCall(current["name"], tuple(current["params"]), current["position"]))

    for kind, position, payload in items:
        if kind == "axis":
            axis, name, filters = payload  # type: ignore[misc]
            if axis in ("model", "service", "pipe"):
                finish()
                current = {"kind": axis, "name": name, "position": position, "section": "criteria",
                           "criteria": [], "include": [], "options": [], "params": []}
                if filters:
                    if axis == "model":
                        current["criteria"].append(PathNode(None, filters, (), position + len(axis) + 2
                                                            + len(name)))
                    else:
                        current["params"].extend(filters)
                continue
            # rma::criteria / rma::include / rma::options
            if name not in _RMA_SECTIONS:
                raise RmaUnknownNameError("section", "rma::" + name, ["rma::" + s for s in _RMA_SECTIONS],
                                          position, text)
            if current is None:
                raise RmaSyntaxError("model:: or service:: before rma::" + name, position, text)
            if current["kind"] == "pipe" or (current["kind"] == "service" and name != "options"):
                raise RmaSyntaxError(f"rma::options (a {current['kind']}:: stage takes no rma::{name})", position,
                                     text)
            if name == "options":
                current["options"].extend(filters)
                current["section"] = "options"
            else:
                if filters:
                    current[name].append(PathNode(None, filters, (), position + 5 + len(name)))
                current["section"] = name
            continue
        node: PathNode = payload  # type: ignore[assignment]
        if current is None:
            raise RmaSyntaxError("model::NAME, service::NAME or pipe::NAME to start the query", position, text)
        if current["kind"] != "model":
            raise RmaSyntaxError(f"'[param$eqvalue]' attached to the {current['kind']}:: name", position, text)
        section = current["section"]
        if section == "options":
            raise RmaSyntaxError("rma::criteria or rma::include before association paths (options take only "
                                 "[name$eqvalue] filters)", position, text)
        if section == "include" and node.name is None:
            raise RmaSyntaxError("an association name (rma::include lists associations, e.g. genes,specimen)",
                                 position, text)
        current[section].append(node)
    finish()
    return RmaQuery(tuple(stages), text)


def _parse_fragment(text: str, what: str) -> list[PathNode]:
    parser = _Parser(text)
    parser.skip_ws()
    if parser.at_end():
        return []
    nodes = []
    while True:
        parser.skip_ws()
        nodes.append(parser.path())
        parser.skip_ws()
        if parser.at_end():
            return nodes
        parser.expect(",", f"',' between {what} items or the end")


def parse_criteria(text: str) -> tuple[PathNode, ...]:
    """Parse a criteria list alone (``[failed$eqfalse],products[id$in5,31]``), as the ``criteria=`` parameter of
    ``/api/v2/data/Model/query.json``."""
    return tuple(_parse_fragment(text, "criteria"))


def parse_include(text: str) -> tuple[PathNode, ...]:
    """Parse an include list alone (``genes,specimen(donor)``)."""
    nodes = _parse_fragment(text, "include")
    for node in nodes:
        if node.name is None:
            raise RmaSyntaxError("an association name", node.position, text)
    return tuple(nodes)


def parse_options(text: str) -> Options:
    """Parse option filters alone (``[num_rows$eq10][order$eq'name']``)."""
    parser = _Parser(text)
    parser.skip_ws()
    filters = parser.filters()
    parser.skip_ws()
    if not parser.at_end():
        raise parser.error("'[option$eqvalue]' or the end")
    return _options(filters, text)


def parse_rma_params(params: dict[str, str], model: str | None = None) -> RmaQuery:
    """A query from URL parameters, in both of Allen's forms.

    * ``q=`` or ``criteria=`` holding a whole query (``model::Gene,rma::criteria,...``) -- the normalized form;
    * ``/api/v2/data/Model/query.json?criteria=[...]&include=...&num_rows=...`` -- pass ``model``; the
      ``criteria`` and ``include`` parameters are lists of paths and ``num_rows``, ``start_row``, ``order``,
      ``only``, ``except``, ``tabular``, ``count`` are options.
    """
    whole = params.get("q") or (params.get("criteria") if model is None else None)
    if whole is not None and model is None:
        return parse_rma(whole)
    if model is None:
        raise RmaSyntaxError("a q= or criteria= parameter holding the query", 0, "")
    criteria = parse_criteria(params.get("criteria", ""))
    include = parse_include(params.get("include", ""))
    option_text = "".join(
        f"[{name}$eq{_quote(params[name])}]" for name in OPTION_NAMES if params.get(name) not in (None, "")
    )
    options = parse_options(option_text) if option_text else Options()
    return RmaQuery((ModelStage(model, criteria, include, options, 0),), f"model::{model}")


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"
