"""Caption search: the query syntax of `GET /api/tasks?q=`, parsed strictly, rendered safely per engine.

Syntax: words separated by spaces, all of which must occur (`red car`);
`"quoted phrases"`, whose words must occur in that order, side by side;
`prefix*`, any word starting with at least 2 letters or digits (`lightho*`).
Matching is by word, case-insensitive, with no stemming and no stop words.
A query that is one taskUUID, or a prefix of one of at least its first 8 hex
digits, also finds that task. Anything else (an unbalanced quote, a `*` that
does not end a prefix, nothing to search for, too many terms) is a `SearchError`.

The index: SQLite FTS5 over `tasks.text` (`tasks_fts`, tokenizer `unicode61
remove_diacritics 2`, kept by triggers) and on PostgreSQL a GIN index on
`to_tsvector('simple', …)` (`CAPTION_VECTOR`). User text never becomes query
syntax: for FTS5 each term is a double-quoted string (quotes doubled), and
PostgreSQL gets each term as a bound parameter of `phraseto_tsquery`, or of
`to_tsquery` for a prefix made only of letters and digits.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import TSQUERY

from store.schema import CAPTION_VECTOR
from store.schema import TEXT_SEARCH_CONFIG
from store.schema import UTCDateTime
from store.schema import tasks

FTS_TABLE = "tasks_fts"
"""The SQLite FTS5 table indexing `tasks.text` (external content, on the tasks' rowid)."""

FTS = sa.table(FTS_TABLE, sa.column("rowid"), sa.column(FTS_TABLE))
"""The FTS5 table as SQLAlchemy sees it: its rowid, and the hidden column named like it that MATCH takes."""

TASKS_ROWID = sa.literal_column("tasks.rowid", sa.Integer)
"""SQLite's rowid of a task, which the FTS5 table is keyed on."""

TEXT_FIRST_MATCHES = 2000
"""SQLite: a query matching fewer captions has them all fetched and sorted; one matching more walks the list."""

TEXT_FIRST_MATCHES_PG = 20000
"""PostgreSQL: a query the planner expects to match fewer captions has them found through GIN and sorted."""

WALK_CHUNK = 2000
"""SQLite: rows of the list's order read at a time when walking it for a common query."""

MAX_TERMS = 16
"""Most words, phrases and prefixes one query may hold."""

MIN_PREFIX_CHARS = 2
"""Letters or digits a prefix needs before its `*` (a shorter one matches most of the index)."""

UUID_PREFIX_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{0,4}){0,3}(-[0-9a-f]{0,12})?$")
"""A taskUUID or a prefix of one of at least its first group (8 hex digits), lower case."""

TERM_RE = re.compile(r'"(?P<phrase>[^"]*)"|(?P<word>[^\s"]+)|(?P<open>")')
"""One term of a query: a quoted phrase, a bare word (possibly ending in `*`), or an unmatched quote."""


class SearchError(ValueError):
    """A query that cannot be searched; the message says why."""


@dataclass(frozen=True)
class Term:
    """One condition: a word or phrase that must occur, or (`prefix`) a word that must start with `text`."""

    text: str
    prefix: bool = False


@dataclass(frozen=True)
class Query:
    """A parsed search: every term must match the caption; `uuid_prefix` may match the taskUUID instead."""

    terms: tuple[Term, ...]
    uuid_prefix: str | None = None


def is_word_char(char: str) -> bool:
    """Letters, digits and private-use characters make words (as FTS5's unicode61); the rest separates them."""
    category = unicodedata.category(char)
    return category[0] in "LN" or category == "Co"


def parse(text: str) -> Query:
    """The query in `text`, or SearchError naming what is wrong with it."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    terms = []
    for match in TERM_RE.finditer(text):
        if match["open"]:
            raise SearchError('unbalanced quote: close the phrase with "')
        if match["phrase"] is not None:
            terms.append(Term(match["phrase"].strip()))
        else:
            terms.append(_word(match["word"]))
    terms = [t for t in terms if any(map(is_word_char, t.text))]
    if not terms:
        raise SearchError("nothing to search for: give a word of letters or digits")
    if len(terms) > MAX_TERMS:
        raise SearchError(f"more than {MAX_TERMS} words, phrases and prefixes")
    words = text.split()
    uuid_prefix = words[0].lower() if len(words) == 1 and UUID_PREFIX_RE.match(words[0].lower()) else None
    return Query(tuple(dict.fromkeys(terms)), uuid_prefix)


def _word(word: str) -> Term:
    """A bare word, or a prefix when it ends in `*`."""
    stem = word.removesuffix("*")
    if "*" in stem or not stem:
        raise SearchError(f"{word!r}: '*' may only end a prefix, as in light*")
    if stem == word:
        return Term(word)
    if not all(map(is_word_char, stem)) or len(stem) < MIN_PREFIX_CHARS:
        raise SearchError(f"{word!r}: a prefix needs at least {MIN_PREFIX_CHARS} letters or digits before '*', "
                          "and nothing else")
    return Term(stem.lower(), prefix=True)


def fts5_match(query: Query) -> str:
    """The FTS5 MATCH expression: every term a quoted string, ANDed (a prefix with FTS5's `*` after it)."""
    quoted = ('"' + t.text.replace('"', '""') + '"' + (" *" if t.prefix else "") for t in query.terms)
    return " AND ".join(quoted)


def pg_tsquery(query: Query) -> sa.ColumnElement:
    """The PostgreSQL tsquery of every term ANDed, each term a bound parameter."""
    parts = [
        sa.func.to_tsquery(TEXT_SEARCH_CONFIG, sa.literal(t.text + ":*"), type_=TSQUERY) if t.prefix
        else sa.func.phraseto_tsquery(TEXT_SEARCH_CONFIG, sa.literal(t.text), type_=TSQUERY)
        for t in query.terms
    ]
    combined = parts[0]
    for part in parts[1:]:
        combined = combined.op("&&", return_type=TSQUERY)(part)
    return combined


def older_than(key: tuple[datetime, str]) -> sa.ColumnElement:
    """WHERE condition: the task comes after sort key `key` (updated_at, task_uuid) in the list's order.

    A row-value comparison, which both databases read as a range of the list's
    index (an OR of the two cases made SQLite scan up from `since` instead).
    """
    return sa.tuple_(tasks.c.updated_at, tasks.c.task_uuid) < sa.tuple_(*key, types=[UTCDateTime, sa.String])


PLAN_ROWS = sa.text(
    "EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks "
    "WHERE to_tsvector('simple', coalesce(text, '')) @@ CAST(:tsquery AS tsquery)"
)
"""PostgreSQL: the plan of a caption search alone, whose row estimate says how many captions match."""


def _estimated_matches(conn: sa.Connection, tsquery: sa.ColumnElement) -> float:
    """PostgreSQL: how many captions the planner expects `tsquery` to match."""
    text = conn.scalar(sa.select(sa.cast(tsquery, sa.Text)))
    return conn.scalar(PLAN_ROWS, {"tsquery": text})[0]["Plan"]["Plan Rows"]


def newest_matching(
    conn: sa.Connection, query: Query, columns: list[sa.ColumnElement], conditions: list[sa.ColumnElement], limit: int
) -> list[sa.Row]:
    """The first `limit` tasks in the list's order that meet `conditions` and whose caption matches `query`.

    PostgreSQL: the planner's estimate of the matches (from the GIN index's
    statistics) decides. Under TEXT_FIRST_MATCHES_PG, the GIN index finds them and
    they are sorted (a materialised CTE: left to itself, the planner reads the
    list's index in order and checks every caption, which costs a `to_tsvector`
    per row and was ten times slower for a query matching 0.5% of captions);
    over it, the list's index is read in order. SQLite's cannot see how many
    captions match, so this reads their rowids from the FTS index first (up to
    TEXT_FIRST_MATCHES): fewer are looked up by rowid and sorted (given as values,
    not a subquery, so that the planner does not walk a status index instead);
    more, and the list's order is walked (`_walk`).
    """
    if conn.dialect.name == "postgresql":
        tsquery = pg_tsquery(query)
        matches = CAPTION_VECTOR.op("@@", return_type=sa.Boolean)(tsquery)
        if _estimated_matches(conn, tsquery) >= TEXT_FIRST_MATCHES_PG:
            return newest(conn, columns, [*conditions, matches], limit)
        found = sa.select(*columns).where(*conditions, matches).cte("found").prefix_with("MATERIALIZED")
        return conn.execute(
            sa.select(found).order_by(found.c.updated_at.desc(), found.c.task_uuid.desc()).limit(limit)
        ).all()
    match = FTS.c[FTS_TABLE].op("MATCH")(fts5_match(query))
    found = conn.scalars(sa.select(FTS.c.rowid).where(match).limit(TEXT_FIRST_MATCHES)).all()
    if len(found) == TEXT_FIRST_MATCHES:
        return _walk(conn, match, columns, conditions, limit)
    return newest(conn, columns, [*conditions, TASKS_ROWID.in_(found)], limit)


def _walk(
    conn: sa.Connection, match: sa.ColumnElement, columns: list[sa.ColumnElement],
    conditions: list[sa.ColumnElement], limit: int,
) -> list[sa.Row]:
    """SQLite, a common query: read the list's order WALK_CHUNK rows at a time, keep the matching ones.

    Which rows of a chunk match, one FTS query tells, over the chunk's rowid range
    (the rowids of tasks near each other in the list are mostly near each other).
    """
    order = (tasks.c.updated_at.desc(), tasks.c.task_uuid.desc())
    found: list[int] = []
    walked = list(conditions)
    while len(found) < limit:
        chunk = conn.execute(
            sa.select(TASKS_ROWID, tasks.c.updated_at, tasks.c.task_uuid).where(*walked).order_by(*order)
            .limit(WALK_CHUNK)
        ).all()
        if not chunk:
            break
        rowids = [row[0] for row in chunk]
        hits = set(conn.scalars(sa.select(FTS.c.rowid).where(match, FTS.c.rowid.between(min(rowids), max(rowids)))))
        found += [rowid for rowid in rowids if rowid in hits]
        if len(chunk) < WALK_CHUNK:
            break
        walked = [*conditions, older_than((chunk[-1].updated_at, chunk[-1].task_uuid))]
    return newest(conn, columns, [TASKS_ROWID.in_(found[:limit])], limit)


def newest(
    conn: sa.Connection, columns: list[sa.ColumnElement], conditions: list[sa.ColumnElement], limit: int
) -> list[sa.Row]:
    """The first `limit` tasks meeting every condition, in the list's order."""
    query = (
        sa.select(*columns).where(*conditions)
        .order_by(tasks.c.updated_at.desc(), tasks.c.task_uuid.desc()).limit(limit)
    )
    return conn.execute(query).all()


def uuid_matches(query: Query) -> sa.ColumnElement | None:
    """WHERE condition: the taskUUID starts with the query (None when the query is no UUID prefix)."""
    if query.uuid_prefix is None:
        return None
    prefix = query.uuid_prefix  # the range lets the primary key's index find it; every UUID character is < 'g'
    uuid = tasks.c.task_uuid
    return sa.and_(uuid >= prefix, uuid < prefix + "g", uuid.startswith(prefix, autoescape=True))
