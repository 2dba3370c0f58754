"""RMA model stages compiled to parameterized SQLAlchemy statements, and run.

Every name in a query is looked up in a whitelist built from the models (:class:`Registry`): model names
(``model::SectionDataSet``), their attributes (columns) and associations (relationships, plus the aliases Allen
uses: ``sub_images``, ``data_sets``, ``data_set``). Values become bound parameters of the column's type; no
text of the query is ever pasted into SQL.

Semantics
---------
* ``rma::criteria``: ``[attr$op value]`` filters the stage's model; ``assoc[...](nested[...])`` keeps the rows
  having at least one associated row that passes (an EXISTS subquery; an association without filters requires
  that one exists). Several filters, and several items, are ANDed. An attribute may be qualified: by a table
  name (``structures.graph_order``, ``genes.acronym``) of this or an enclosing level, or by an association path
  (``genes[chromosome.name$eq'X']`` style: ``specimen.name``). An unqualified attribute that the current level
  lacks is looked up in the enclosing levels, as SQL would (``well_known_file_type[name$eq'X'][attachable_id$eq5]``).
  ``Structure`` has the virtual attribute ``structure_set_id`` (membership of a structure set).
* Operators: ``$eq $ne $lt $le $gt $ge``; ``$in`` with a comma list; ``$li`` LIKE (case-sensitive) and ``$il``
  (case-insensitive) with ``*`` as the wildcard (``%`` and ``_`` are literal); ``$is`` null/true/false;
  ``[attr]`` alone is "not null". Values are checked against the column type (an integer column refuses
  ``'abc'``; booleans take true/false/t/f/1/0, quoted or not).
* ``rma::include``: associated rows are nested in each row under the association's name (a list for a
  collection, an object or null otherwise), loaded in one batched query per association and level. An include
  with filters also restricts the rows of the level above, like Allen's (Rails') inner join.
* ``rma::options``: ``num_rows`` (default 50; ``'all'`` up to the row cap, beyond which the query is refused),
  ``start_row``, ``order`` (``attr``, ``attr$desc``, ``table.attr``, a to-one association's attribute such as
  ``structure.graph_order``, or a collection included with ``rma::include`` such as
  ``sub_images.section_number``, which orders the nested list), ``only`` / ``except`` (unqualified names apply
  at every level that has them, qualified ones at that level), ``count$eqfalse`` (skip counting),
  ``tabular`` (flat rows of the named columns, ``name as title``; joins included associations).
* Paging is deterministic: the primary key ends every ordering, so pages never skip or repeat rows.
* Limits: a row cap (:data:`DEFAULT_MAX_ROWS`) on the rows of a page and on the nested rows of all includes, and
  a time limit per query (PostgreSQL ``statement_timeout``; a progress handler on SQLite); queries run in a
  read-only transaction when :func:`execute_rma` opens the connection.

Examples that run (Allen's documentation and AllenSDK)::

    model::SectionDataSet,rma::criteria,[failed$eq'false'],products[abbreviation$eq'Mouse'],
        plane_of_section[name$eq'coronal'],genes[acronym$eq'Adora2a']
    model::SectionDataSet,rma::criteria,[failed$eqfalse],products[id$in5,31],rma::include,
        specimen(donor(transgenic_lines),injections(structure,primary_injection_structure)),
        rma::options[num_rows$eq'all']
    model::SectionDataSet,rma::criteria,[id$eq100],rma::include,sub_images,alignment3d,
        rma::options[order$eq'sub_images.section_number$asc']
    model::SectionDataSet,rma::criteria,products[id$in1],genes[id$in5],rma::include,genes,
        rma::options[only$eq'id,genes.id,genes.name,reference_space_id']
    model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$in100,101][is_injection$eqfalse]
        [normalized_projection_volume$gt0.000100][hemisphere_id$in1,2],structure[name$eq'Primary visual area'],
        rma::options[num_rows$eq'all'][count$eqfalse]
    model::StructureUnionize,rma::criteria,section_data_set[id$eq200],structure[acronym$in'VISp','MOp'],
        rma::include,structure,rma::options[order$eq'structures.graph_order'][tabular$eq'structure.acronym as
        acronym','sum_pixel_intensity','expression_energy']
    model::Structure,rma::criteria,[graph_id$in1],rma::options[order$eq'structures.graph_order'][num_rows$eq'all']
    model::Structure,rma::criteria,[structure_set_id$in167587189],rma::options[num_rows$eq'all']
    model::Structure,rma::criteria,structure_sets[name$in'Brain - Major Divisions'],rma::options[num_rows$eq'all']
    model::Structure,rma::criteria,[acronym$il'visp*'],rma::include,parent,rma::options[order$eq'acronym$desc']
    model::Gene,rma::criteria,[acronym$eq'Pdyn'],rma::include,data_sets(plane_of_section)
    model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'projection_density_100'][attachable_id$eq100]
    model::SectionImage,rma::criteria,[data_set_id$eq100],rma::include,alignment2d,
        rma::options[order$eq'section_number']
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Sequence, Union

from sqlalchemy import Boolean, Connection, Engine, Float, Integer, Numeric, and_, func, inspect, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from brainmap.store import models as m
from brainmap.store.rma.parser import (
    Filter,
    ModelStage,
    PathNode,
    RmaLimitError,
    RmaQuery,
    RmaSyntaxError,
    RmaUnknownNameError,
    RmaValueError,
    ServiceCall,
    parse_rma,
)

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_NUM_ROWS",
    "DEFAULT_TIMEOUT_S",
    "Association",
    "CompiledQuery",
    "ModelInfo",
    "Registry",
    "RmaResult",
    "compile_stage",
    "execute_rma",
    "registry",
]

#: Rows a page holds when ``num_rows`` is not given (Allen's default).
DEFAULT_NUM_ROWS = 50
#: Most rows one query may return (a page, and the nested rows of all its includes together).
DEFAULT_MAX_ROWS = 25_000
#: Seconds one query may run.
DEFAULT_TIMEOUT_S = 30.0

_INT64 = (-(2**63), 2**63 - 1)
_MAX_STRING = 10_000
_CHUNK = 500


# -- the whitelist -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Association:
    """An association of a model: its relationship attribute, the target model, whether it is a collection."""

    name: str
    attribute: InstrumentedAttribute
    target: "ModelInfo"
    uselist: bool


@dataclass
class ModelInfo:
    """What RMA may name of one model: attributes (columns), associations, aliases and virtual attributes."""

    name: str
    cls: type
    table_name: str
    attributes: dict[str, InstrumentedAttribute] = field(default_factory=dict)
    associations: dict[str, Association] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    virtual: dict[str, tuple[str, str]] = field(default_factory=dict)

    def association(self, name: str, position: int | None = None, text: str | None = None) -> Association:
        """The association ``name`` (or an alias of one); :class:`RmaUnknownNameError` listing the valid ones."""
        real = self.aliases.get(name, name)
        if real in self.associations:
            return self.associations[real]
        raise RmaUnknownNameError("association", name, [*self.associations, *self.aliases], position, text,
                                  context=self.name)

    def attribute_names(self) -> list[str]:
        """The attribute names, in table order."""
        return list(self.attributes)

    def describe(self) -> dict[str, Any]:
        """``{name, table, attributes: {name: type}, associations: {name: target model}}`` (for ``describe``)."""
        return {
            "name": self.name, "table": self.table_name,
            "attributes": {n: _type_name(a) for n, a in self.attributes.items()},
            "virtual_attributes": {n: f"{a}.{b}" for n, (a, b) in self.virtual.items()},
            "associations": {n: a.target.name + ("[]" if a.uselist else "") for n, a in self.associations.items()},
            "aliases": dict(self.aliases),
        }


def _type_name(attribute: InstrumentedAttribute) -> str:
    kind = attribute.property.columns[0].type
    if isinstance(kind, Boolean):
        return "boolean"
    if isinstance(kind, Integer):
        return "integer"
    if isinstance(kind, (Float, Numeric)):
        return "float"
    return "string"


class Registry:
    """Allen model name -> :class:`ModelInfo`, built from :data:`brainmap.store.models.MODELS`."""

    def __init__(self, models: dict[str, type]) -> None:
        self.models: dict[str, ModelInfo] = {}
        by_class: dict[type, ModelInfo] = {}
        for name, cls in models.items():
            mapper = inspect(cls)
            info = ModelInfo(name, cls, getattr(cls, "__rma_table__", None) or cls.__tablename__,
                             aliases=dict(getattr(cls, "__rma_aliases__", {})),
                             virtual=dict(getattr(cls, "__rma_virtual__", {})))
            hidden = set(getattr(cls, "__rma_hidden__", ()))
            for column in mapper.column_attrs:
                if column.key not in hidden:
                    info.attributes[column.key] = getattr(cls, column.key)
            self.models[name] = info
            by_class[cls] = info
        for info in self.models.values():
            for rel in inspect(info.cls).relationships:
                target = by_class.get(rel.mapper.class_)
                if target is not None:
                    info.associations[rel.key] = Association(rel.key, getattr(info.cls, rel.key), target,
                                                             bool(rel.uselist))
        self.by_table = {info.table_name: info for info in self.models.values()}

    def model(self, name: str, position: int | None = None, text: str | None = None) -> ModelInfo:
        """The model ``name``; :class:`RmaUnknownNameError` listing the valid models."""
        if name in self.models:
            return self.models[name]
        raise RmaUnknownNameError("model", name, self.models, position, text)

    def describe(self) -> dict[str, Any]:
        """Every model's :meth:`ModelInfo.describe` (for ``enumerate``)."""
        return {name: info.describe() for name, info in sorted(self.models.items())}


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The registry of the brainmap models (built once)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry(m.MODELS)
    return _REGISTRY


# -- results -------------------------------------------------------------------------------------------------------
@dataclass
class RmaResult:
    """Rows of one page with Allen's paging numbers; ``columns`` is set for tabular results."""

    model: str
    rows: list[dict[str, Any]]
    start_row: int
    total_rows: int
    columns: list[str] | None = None
    table_name: str = ""

    @property
    def num_rows(self) -> int:
        return len(self.rows)


# -- compilation ---------------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    """One level of a filter's scope: the model and the entity (class or alias) its columns come from."""

    info: ModelInfo
    entity: Any


@dataclass
class _IncludeNode:
    name: str
    association: Association
    filters: tuple[Filter, ...]
    children: list["_IncludeNode"]
    position: int
    entity: Any
    order: list[tuple[InstrumentedAttribute, bool]] = field(default_factory=list)

    def has_filters(self) -> bool:
        return bool(self.filters) or any(c.has_filters() for c in self.children)

    def walk(self) -> Iterable["_IncludeNode"]:
        yield self
        for child in self.children:
            yield from child.walk()


#: Most association nodes (criteria and includes together) one query may name.
MAX_PATH_NODES = 64
#: Deepest nesting of associations in ``rma::criteria`` (each level is a nested subquery; SQLite's parser
#: overflows its stack at 10) and most filters in one query (SQLite: "Expression tree is too large" at 1,000).
MAX_CRITERIA_DEPTH = 8
MAX_FILTERS = 500


def _count_nodes(node: PathNode) -> int:
    return 1 + sum(_count_nodes(child) for child in node.children)


def _depth(node: PathNode) -> int:
    return 1 + max((_depth(child) for child in node.children), default=0)


def _count_filters(node: PathNode) -> int:
    return len(node.filters) + sum(_count_filters(child) for child in node.children)


def _check_unique_siblings(nodes: Sequence[PathNode], text: str) -> None:
    """An association included twice at the same level is an error (it would be loaded twice)."""
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise RmaValueError(f"{node.name} is included twice at the same level; name it once", node.position,
                                text, expected="each association once per level")
        seen.add(node.name or "")
        _check_unique_siblings(node.children, text)


def _like_pattern(value: str) -> str:
    """Allen's ``*`` wildcard to SQL LIKE, with ``\\``, ``%`` and ``_`` escaped (literal)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


class _Compiler:
    def __init__(self, stage: ModelStage, text: str, reg: Registry, max_rows: int) -> None:
        self.stage = stage
        self.text = text
        self.reg = reg
        self.max_rows = max_rows
        self.root = reg.model(stage.model, stage.position + len("model::") if text else None, text)
        nodes = sum(_count_nodes(node) for node in (*stage.criteria, *stage.include))
        if nodes > MAX_PATH_NODES:
            raise RmaLimitError(f"the query names {nodes} associations and filter groups; at most {MAX_PATH_NODES} "
                                "are accepted", stage.position, text, expected=f"at most {MAX_PATH_NODES}")
        depth = max((_depth(node) - (node.name is None) for node in stage.criteria), default=0)
        if depth > MAX_CRITERIA_DEPTH:
            raise RmaLimitError(f"criteria nest associations {depth} levels deep; at most {MAX_CRITERIA_DEPTH} are "
                                "accepted", stage.position, text, expected=f"at most {MAX_CRITERIA_DEPTH} levels")
        filters = sum(_count_filters(node) for node in (*stage.criteria, *stage.include))
        if filters > MAX_FILTERS:
            raise RmaLimitError(f"the query has {filters} filters; at most {MAX_FILTERS} are accepted",
                                stage.position, text, expected=f"at most {MAX_FILTERS} filters")
        _check_unique_siblings(stage.include, text)
        self.includes = [self._include(node, self.root, (0,)) for node in stage.include]

    # errors
    def unknown_attribute(self, name: str, info: ModelInfo, position: int) -> RmaUnknownNameError:
        return RmaUnknownNameError("attribute", name, [*info.attributes, *info.virtual], position, self.text,
                                   context=info.name)

    # values
    def coerce(self, attribute: InstrumentedAttribute, atom: str, f: Filter) -> Any:
        column_type = attribute.property.columns[0].type
        position = f.value.position if f.value is not None else f.position
        where = f"{f.name}"
        if isinstance(column_type, Boolean):
            word = atom.strip().lower()
            if word in ("true", "t", "1"):
                return True
            if word in ("false", "f", "0"):
                return False
            raise RmaValueError(f"{where} is true or false, got {atom!r}", position, self.text,
                                expected="true or false")
        if isinstance(column_type, Integer):
            if not re.fullmatch(r"[+-]?\d{1,19}", atom.strip()):
                raise RmaValueError(f"{where} is an integer, got {atom!r}", position, self.text,
                                    expected="an integer")
            number = int(atom.strip())
            if not _INT64[0] <= number <= _INT64[1]:
                raise RmaValueError(f"{where}: {atom} is out of range", position, self.text,
                                    expected="a 64-bit integer")
            return number
        if isinstance(column_type, (Float, Numeric)):
            try:
                number = float(atom.strip())
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", atom.strip()):
                raise RmaValueError(f"{where} is a number, got {atom!r}", position, self.text, expected="a number")
            return number
        if len(atom) > _MAX_STRING:
            raise RmaLimitError(f"{where}: a string of {len(atom):,} characters is too long", position, self.text,
                                expected=f"at most {_MAX_STRING} characters")
        return atom

    def condition(self, attribute: InstrumentedAttribute, f: Filter) -> ColumnElement:
        """The SQL condition of one filter on one (resolved) column."""
        if f.op is None or f.value is None:
            return attribute.isnot(None)
        atoms = f.value.atoms
        if f.op == "in":
            return attribute.in_([self.coerce(attribute, a, f) for a in atoms])
        if len(atoms) != 1:
            raise RmaValueError(f"{f.name}${f.op} takes one value, got {len(atoms)} (use $in for a list)",
                                f.value.position, self.text, expected="one value")
        atom = atoms[0]
        if f.op in ("li", "il"):
            if _type_name(attribute) != "string":
                raise RmaValueError(f"${f.op} compares text, and {f.name} is {_type_name(attribute)}",
                                    f.position, self.text, expected="a text attribute")
            pattern = _like_pattern(self.coerce(attribute, atom, f))
            return attribute.like(pattern, escape="\\") if f.op == "li" else attribute.ilike(pattern, escape="\\")
        if f.op == "is":
            word = atom.strip().lower()
            if word == "null" and not f.value.quoted[0]:
                return attribute.is_(None)
            if _type_name(attribute) == "boolean":
                return attribute.is_(self.coerce(attribute, atom, f))
            raise RmaValueError(f"$is takes null (or true/false for a boolean), got {atom!r}", f.value.position,
                                self.text, expected="null, true or false")
        value = self.coerce(attribute, atom, f)
        ops = {"eq": "__eq__", "ne": "__ne__", "lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__"}
        return getattr(attribute, ops[f.op])(value)

    # filters
    def _exists(self, association: Association, entity_from: Any, condition: ColumnElement | None,
                target_entity: Any) -> ColumnElement:
        rel = getattr(entity_from, association.name).of_type(target_entity)
        if association.uselist:
            return rel.any(condition) if condition is not None else rel.any()
        return rel.has(condition) if condition is not None else rel.has()

    def filter_condition(self, f: Filter, frames: list[_Frame]) -> ColumnElement:
        """One filter, resolved in ``frames`` (innermost first)."""
        parts = f.name.split(".")
        attribute_name = parts[-1]
        if len(parts) == 1:
            for frame in frames:
                if attribute_name in frame.info.attributes:
                    return self.condition(getattr(frame.entity, attribute_name), f)
                if attribute_name in frame.info.virtual:
                    association_name, target_attribute = frame.info.virtual[attribute_name]
                    return self._path_condition(frame, [association_name], target_attribute, f)
            raise self.unknown_attribute(attribute_name, frames[0].info, f.position)
        qualifier = parts[:-1]
        if len(qualifier) == 1:
            for frame in frames:
                if qualifier[0] in (frame.info.table_name, frame.info.name):
                    if attribute_name not in frame.info.attributes:
                        raise self.unknown_attribute(attribute_name, frame.info, f.position)
                    return self.condition(getattr(frame.entity, attribute_name), f)
        return self._path_condition(frames[0], qualifier, attribute_name, f)

    def _path_condition(self, frame: _Frame, path: list[str], attribute_name: str, f: Filter) -> ColumnElement:
        association = frame.info.association(path[0], f.position, self.text)
        target = aliased(association.target.cls)
        inner = _Frame(association.target, target)
        if len(path) > 1:
            condition = self._path_condition(inner, path[1:], attribute_name, f)
        else:
            if attribute_name not in association.target.attributes:
                raise self.unknown_attribute(attribute_name, association.target, f.position)
            condition = self.condition(getattr(target, attribute_name), f)
        return self._exists(association, frame.entity, condition, target)

    def node_condition(self, node: PathNode, frames: list[_Frame]) -> ColumnElement:
        """A criteria path: filters on ``frames[0]`` (name None) or an EXISTS over the association."""
        if node.name is None:
            return and_(*[self.filter_condition(f, frames) for f in node.filters])
        association = frames[0].info.association(node.name, node.position, self.text)
        target = aliased(association.target.cls)
        inner = [_Frame(association.target, target), *frames]
        conditions = [self.filter_condition(f, inner) for f in node.filters]
        conditions += [self.node_condition(child, inner) for child in node.children]
        return self._exists(association, frames[0].entity, and_(*conditions) if conditions else None, target)

    # includes
    def _include(self, node: PathNode, parent: ModelInfo, path: tuple[int, ...]) -> _IncludeNode:
        assert node.name is not None
        association = parent.association(node.name, node.position, self.text)
        entity = aliased(association.target.cls)
        include = _IncludeNode(node.name, association, node.filters, [], node.position, entity)
        include.children = [self._include(child, association.target, path + (k,))
                            for k, child in enumerate(node.children)]
        return include

    def restriction(self, node: _IncludeNode, frames: list[_Frame]) -> list[ColumnElement]:
        """Conditions on ``node``'s rows: its filters, and EXISTS of its filtered children."""
        inner = [_Frame(node.association.target, node.entity), *frames]
        conditions = [self.filter_condition(f, inner) for f in node.filters]
        for child in node.children:
            if child.has_filters():
                target = aliased(child.association.target.cls)
                shadow = _IncludeNode(child.name, child.association, child.filters, child.children, child.position,
                                      target)
                child_conditions = self.restriction(shadow, inner)
                conditions.append(self._exists(child.association, node.entity,
                                               and_(*child_conditions) if child_conditions else None, target))
        return conditions

    def root_conditions(self) -> list[ColumnElement]:
        frames = [_Frame(self.root, self.root.cls)]
        conditions = [self.node_condition(node, frames) for node in self.stage.criteria]
        for include in self.includes:
            if include.has_filters():
                target = aliased(include.association.target.cls)
                shadow = _IncludeNode(include.name, include.association, include.filters, include.children,
                                      include.position, target)
                inner = self.restriction(shadow, frames)
                conditions.append(self._exists(include.association, self.root.cls,
                                               and_(*inner) if inner else None, target))
        return conditions

    # names in options
    def find_include(self, qualifier: str) -> _IncludeNode | None:
        """The include node named ``qualifier`` (association name, alias or target table name)."""
        for top in self.includes:
            for node in top.walk():
                if qualifier in (node.name, node.association.name, node.association.target.table_name,
                                 node.association.target.name):
                    return node
        return None

    def include_path(self, target: _IncludeNode) -> list[_IncludeNode]:
        def search(nodes: list[_IncludeNode], trail: list[_IncludeNode]) -> list[_IncludeNode] | None:
            for node in nodes:
                if node is target:
                    return trail + [node]
                found = search(node.children, trail + [node])
                if found:
                    return found
            return None

        return search(self.includes, []) or []

    def resolve_column(self, name: str, position: int, what: str) -> tuple[_IncludeNode | None, InstrumentedAttribute,
                                                                           list[Association]]:
        """(include node or None for the root, the column, to-one association path from the root if not included)."""
        parts = name.split(".")
        attribute = parts[-1]
        if len(parts) == 1 or (len(parts) == 2 and parts[0] in (self.root.table_name, self.root.name)):
            if attribute not in self.root.attributes:
                raise self.unknown_attribute(attribute, self.root, position)
            return None, getattr(self.root.cls, attribute), []
        if len(parts) == 2:
            node = self.find_include(parts[0])
            if node is not None:
                if attribute not in node.association.target.attributes:
                    raise self.unknown_attribute(attribute, node.association.target, position)
                return node, getattr(node.entity, attribute), []
        # A path of to-one associations from the root.
        info = self.root
        chain: list[Association] = []
        for step in parts[:-1]:
            association = info.association(step, position, self.text)
            if association.uselist:
                raise RmaValueError(f"{what} {name!r}: {step} is a collection; include it with rma::include to "
                                    f"{what} by its attributes", position, self.text,
                                    expected="an attribute of the model or of a to-one association")
            chain.append(association)
            info = association.target
        if attribute not in info.attributes:
            raise self.unknown_attribute(attribute, info, position)
        return None, getattr(info.cls, attribute), chain


@dataclass
class CompiledQuery:
    """A compiled model stage; :meth:`execute` runs it on a session or connection."""

    compiler: _Compiler
    where: list[ColumnElement]
    num_rows: int | None
    start_row: int
    count: bool

    @property
    def model(self) -> str:
        return self.compiler.root.name

    @cached_property
    def _root_order(self) -> tuple[list[Any], list[tuple[list[Association], Any]]]:
        """(ORDER BY clauses of the root select, to-one joins they need) ; nested orders go onto include nodes."""
        c = self.compiler
        clauses: list[Any] = []
        joins: list[tuple[list[Association], Any]] = []
        for item in c.stage.options.order:
            node, attribute, chain = c.resolve_column(item.name, item.position, "order")
            if node is not None:
                if node.association.uselist or any(n.association.uselist for n in c.include_path(node)):
                    node.order.append((attribute, item.descending))
                    continue
                # A to-one include: join it for ordering.
                path = [n.association for n in c.include_path(node)]
                attribute = self._joined(joins, path, attribute)
            elif chain:
                attribute = self._joined(joins, chain, attribute)
            clauses.append(attribute.desc() if item.descending else attribute.asc())
        clauses.append(c.root.cls.id.asc())
        return clauses, joins

    @staticmethod
    def _joined(joins: list[tuple[list[Association], Any]], chain: list[Association], attribute: Any) -> Any:
        for existing, entity in joins:
            if existing == chain:
                return getattr(entity, attribute.key)
        entities = [aliased(a.target.cls) for a in chain]
        joins.append((chain, entities))
        return getattr(entities[-1], attribute.key)

    def _apply_joins(self, stmt: Any, joins: list[tuple[list[Association], Any]]) -> Any:
        for chain, entities in joins:
            source = self.compiler.root.cls
            for association, entity in zip(chain, entities):
                stmt = stmt.outerjoin(getattr(source, association.name).of_type(entity))
                source = entity
        return stmt

    # -- running --------------------------------------------------------------------------------------------------
    def execute(self, bind: Union[Session, Connection]) -> RmaResult:
        """Run the query: count (unless ``count$eqfalse``), fetch the page, load the includes."""
        if self.compiler.stage.options.tabular:
            return self._execute_tabular(bind)
        c = self.compiler
        root = c.root
        total = None
        if self.count:
            total = bind.execute(select(func.count()).select_from(root.cls).where(*self.where)).scalar_one()
            self._check_total(total)
        clauses, joins = self._root_order
        stmt = select(*[a.label(n) for n, a in root.attributes.items()]).select_from(root.cls)
        stmt = self._apply_joins(stmt, [(chain, entities) for chain, entities in joins]).where(*self.where)
        stmt = stmt.order_by(*clauses).offset(self.start_row or None)
        limit = self.num_rows if self.num_rows is not None else c.max_rows + 1
        stmt = stmt.limit(limit)
        rows = [dict(r._mapping) for r in bind.execute(stmt)]
        if self.num_rows is None and len(rows) > c.max_rows:
            self._refuse_all(None)
        budget = [c.max_rows]
        self._load_includes(bind, root, rows, c.includes, budget)
        out = [self._project(row, root, c.includes) for row in rows]
        if total is None:
            total = self.start_row + len(out)
        return RmaResult(root.name, out, self.start_row, total, table_name=root.table_name)

    def _check_total(self, total: int) -> None:
        if self.num_rows is None and total - self.start_row > self.compiler.max_rows:
            self._refuse_all(total - self.start_row)

    def _refuse_all(self, count: int | None) -> None:
        c = self.compiler
        many = f"{count:,} rows" if count is not None else f"more than {c.max_rows:,} rows"
        raise RmaLimitError(f"num_rows 'all' would return {many}; this server returns at most {c.max_rows:,} per "
                            "query: page with [start_row$eqN][num_rows$eqM]",
                            c.stage.options.positions.get("num_rows"), c.text,
                            expected=f"num_rows at most {c.max_rows}")

    def _load_includes(self, bind: Any, parent: ModelInfo, rows: list[dict[str, Any]], nodes: list[_IncludeNode],
                       budget: list[int]) -> None:
        if not rows or not nodes:
            return
        c = self.compiler
        ids = list(dict.fromkeys(r["id"] for r in rows))
        for node in nodes:
            target = node.association.target
            entity = node.entity
            parent_alias = aliased(parent.cls)
            frames = [_Frame(parent, parent_alias)]
            restriction = c.restriction(node, frames)
            children: dict[Any, list[dict[str, Any]]] = {}
            fetched: list[dict[str, Any]] = []
            default = [getattr(entity, col.key).asc() for col in (node.association.attribute.property.order_by or ())
                       if getattr(col, "key", None) in target.attributes]
            order = [a.desc() if desc else a.asc() for a, desc in node.order] + default + [entity.id.asc()]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                columns = [getattr(entity, name).label(name) for name in target.attributes]
                stmt = (select(parent_alias.id.label("__parent__"), *columns)
                        .select_from(parent_alias)
                        .join(getattr(parent_alias, node.association.name).of_type(entity))
                        .where(parent_alias.id.in_(chunk), *restriction)
                        .order_by(parent_alias.id, *order)
                        .limit(budget[0] + 1))
                for r in bind.execute(stmt):
                    mapping = dict(r._mapping)
                    parent_id = mapping.pop("__parent__")
                    children.setdefault(parent_id, []).append(mapping)
                    fetched.append(mapping)
                    budget[0] -= 1
                    if budget[0] < 0:
                        raise RmaLimitError(f"the included {node.name} rows exceed this server's cap of "
                                            f"{c.max_rows:,} rows per query; ask for fewer rows (num_rows) or "
                                            "filter the include", node.position, c.text,
                                            expected=f"at most {c.max_rows} rows in all")
            # Re-sort per parent (chunks are ordered per parent already; this keeps node order stable).
            for row in rows:
                found = children.get(row["id"], [])
                row[f"__include__{id(node)}"] = found if node.association.uselist else (found[0] if found else None)
            self._load_includes(bind, target, fetched, node.children, budget)

    def _selected(self, info: ModelInfo, node: _IncludeNode | None) -> list[str]:
        """The attributes of a level after only / except."""
        options = self.compiler.stage.options
        names = info.attribute_names()
        labels = {info.table_name, info.name}
        if node is not None:
            labels.add(node.name)
        def applies(name: str) -> str | None:
            parts = name.rsplit(".", 1)
            if len(parts) == 1:
                return parts[0]
            return parts[1] if parts[0] in labels else None
        if options.only:
            wanted = {applies(n) for n, _ in options.only} - {None}
            names = [n for n in names if n in wanted]
        if options.except_:
            unwanted = {applies(n) for n, _ in options.except_} - {None}
            names = [n for n in names if n not in unwanted]
        return names

    def _project(self, row: dict[str, Any], info: ModelInfo, nodes: list[_IncludeNode],
                 node: _IncludeNode | None = None) -> dict[str, Any]:
        out = {name: row[name] for name in self._selected(info, node)}
        for child in nodes:
            value = row.get(f"__include__{id(child)}")
            target = child.association.target
            if isinstance(value, list):
                out[child.name] = [self._project(v, target, child.children, child) for v in value]
            elif value is not None:
                out[child.name] = self._project(value, target, child.children, child)
            else:
                out[child.name] = None
        return out

    def check_names(self) -> None:
        """Validate only / except names and the order at compile time (errors before any SQL runs)."""
        c = self.compiler
        options = c.stage.options
        levels: list[tuple[ModelInfo, set[str]]] = [(c.root, {c.root.table_name, c.root.name})]
        for top in c.includes:
            for node in top.walk():
                target = node.association.target
                levels.append((target, {target.table_name, target.name, node.name}))
        for name, position in (*options.only, *options.except_):
            parts = name.rsplit(".", 1)
            if len(parts) == 1:
                if not any(parts[0] in info.attributes for info, _ in levels):
                    raise c.unknown_attribute(parts[0], c.root, position)
                continue
            matching = [info for info, labels in levels if parts[0] in labels]
            if not matching:
                raise RmaUnknownNameError("qualifier", parts[0], sorted(set().union(*[l for _, l in levels])),
                                          position, c.text, context="only/except")
            if not any(parts[1] in info.attributes for info in matching):
                raise c.unknown_attribute(parts[1], matching[0], position)
        self._root_order  # resolves the order names

    # -- tabular ----------------------------------------------------------------------------------------------------
    def _execute_tabular(self, bind: Any) -> RmaResult:
        c = self.compiler
        root = c.root
        columns: list[Any] = []
        titles: list[str] = []
        needed: list[_IncludeNode] = []
        for item in c.stage.options.tabular:
            node, attribute, chain = c.resolve_column(item.name, item.position, "tabular")
            if chain:
                raise RmaValueError(f"tabular column {item.name!r}: include {chain[0].name} with rma::include",
                                    item.position, c.text, expected="a column of the model or of an included "
                                                                     "association")
            if node is not None:
                for step in c.include_path(node):
                    if step not in needed:
                        needed.append(step)
            if item.title in titles:
                raise RmaValueError(f"tabular column title {item.title!r} appears twice", item.position, c.text,
                                    expected="distinct titles (use 'name as title')")
            titles.append(item.title)
            columns.append(attribute.label(item.title))
        stmt = select(*columns).select_from(root.cls)
        order: list[Any] = []
        for item in c.stage.options.order:
            node, attribute, chain = c.resolve_column(item.name, item.position, "order")
            if chain:
                raise RmaValueError(f"order {item.name!r}: include {chain[0].name} with rma::include to order a "
                                    "tabular query by it", item.position, c.text)
            if node is not None:
                for step in c.include_path(node):
                    if step not in needed:
                        needed.append(step)
            order.append(attribute.desc() if item.descending else attribute.asc())
        frames_of: dict[int, list[_Frame]] = {}
        for node in needed:
            path = c.include_path(node)
            parent_entity = path[-2].entity if len(path) > 1 else root.cls
            frames = frames_of.get(id(path[-2]), [_Frame(root, root.cls)]) if len(path) > 1 else \
                [_Frame(root, root.cls)]
            restriction = c.restriction(node, frames)
            relation = getattr(parent_entity, node.association.name).of_type(node.entity)
            if restriction:
                relation = relation.and_(*restriction)
            stmt = stmt.outerjoin(relation)
            frames_of[id(node)] = [_Frame(node.association.target, node.entity), *frames]
        stmt = stmt.where(*self.where)
        order.append(root.cls.id.asc())
        order += [node.entity.id.asc() for node in needed]
        total = None
        if self.count:
            total = bind.execute(select(func.count()).select_from(stmt.order_by(None).subquery())).scalar_one()
            self._check_total(total)
        limit = self.num_rows if self.num_rows is not None else c.max_rows + 1
        page = stmt.order_by(*order).offset(self.start_row or None).limit(limit)
        rows = [dict(r._mapping) for r in bind.execute(page)]
        if self.num_rows is None and len(rows) > c.max_rows:
            self._refuse_all(None)
        if total is None:
            total = self.start_row + len(rows)
        return RmaResult(root.name, rows, self.start_row, total, columns=titles, table_name=root.table_name)


def compile_stage(stage: ModelStage, text: str = "", *, max_rows: int = DEFAULT_MAX_ROWS,
                  reg: Registry | None = None) -> CompiledQuery:
    """Compile one model stage; raises the RMA errors (unknown names, bad values, limits) before any SQL runs."""
    compiler = _Compiler(stage, text, reg or registry(), max_rows)
    options = stage.options
    num_rows: int | None
    if options.num_rows is None:
        num_rows = min(DEFAULT_NUM_ROWS, max_rows)
    elif options.num_rows == "all":
        num_rows = None
    else:
        num_rows = int(options.num_rows)
        if num_rows > max_rows:
            raise RmaLimitError(f"num_rows {num_rows:,} is more than this server returns per query "
                                f"({max_rows:,}); page with start_row", options.positions.get("num_rows"), text,
                                expected=f"num_rows at most {max_rows}")
    start_row = int(options.start_row or 0)
    if start_row > 2**31:
        raise RmaLimitError(f"start_row {start_row:,} is out of range", options.positions.get("start_row"), text,
                            expected="start_row below 2^31")
    compiled = CompiledQuery(compiler, compiler.root_conditions(), num_rows, start_row,
                             options.count is not False)
    compiled.check_names()
    return compiled


# -- running with limits -------------------------------------------------------------------------------------------
def _model_stage(query: Union[str, RmaQuery, ModelStage]) -> tuple[ModelStage, str]:
    if isinstance(query, str):
        query = parse_rma(query)
    if isinstance(query, ModelStage):
        return query, ""
    stages = query.stages
    if len(stages) != 1 or not isinstance(stages[0], ModelStage):
        kinds = ", ".join("model" if isinstance(s, ModelStage) else "service" if isinstance(s, ServiceCall)
                          else "pipe" for s in stages)
        raise RmaSyntaxError("a single model:: stage (service:: and pipe:: stages are answered by the server)",
                             getattr(next((s for s in stages if not isinstance(s, ModelStage)), stages[0]),
                                     "position", 0), query.text, found=f"stages: {kinds}")
    return stages[0], query.text


def execute_rma(bind: Any, query: Union[str, RmaQuery, ModelStage], *, max_rows: int = DEFAULT_MAX_ROWS,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> RmaResult:
    """Parse (if text), compile and run one model stage.

    ``bind`` is a :class:`~brainmap.store.database.Database`, an Engine, a Session or a Connection. When given
    a Database or an Engine, the query runs on a fresh connection in a read-only transaction with a time limit
    of ``timeout_s`` (:class:`RmaLimitError` when exceeded); a Session or Connection is used as it is.
    """
    stage, text = _model_stage(query)
    compiled = compile_stage(stage, text, max_rows=max_rows)
    engine = getattr(bind, "engine", bind) if not isinstance(bind, (Session, Connection)) else None
    if engine is None:
        return compiled.execute(bind)
    if not isinstance(engine, Engine):
        raise TypeError(f"execute_rma needs a Database, Engine, Session or Connection, got {type(bind).__name__}")
    with engine.connect() as connection:
        with connection.begin():
            _guard(connection, timeout_s)
            try:
                return compiled.execute(connection)
            except OperationalError as exc:
                if _is_timeout(exc):
                    raise RmaLimitError(f"the query ran longer than {timeout_s:g} s; narrow it", None, text,
                                        expected="a narrower query") from None
                raise
            except DBAPIError as exc:
                if _is_timeout(exc):
                    raise RmaLimitError(f"the query ran longer than {timeout_s:g} s; narrow it", None, text,
                                        expected="a narrower query") from None
                raise
            finally:
                _unguard(connection)


def _guard(connection: Connection, timeout_s: float) -> None:
    """Read-only transaction and a time limit."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")
        raw = connection.connection.dbapi_connection
        if isinstance(raw, sqlite3.Connection):
            deadline = time.monotonic() + timeout_s
            raw.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)


def _unguard(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        raw = connection.connection.dbapi_connection
        if isinstance(raw, sqlite3.Connection):
            raw.set_progress_handler(None, 0)
        connection.exec_driver_sql("PRAGMA query_only = OFF")


def _is_timeout(exc: Exception) -> bool:
    message = str(getattr(exc, "orig", exc)).lower()
    return "interrupted" in message or "statement timeout" in message or "canceling statement" in message

