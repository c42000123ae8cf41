"""Asterisk's records read from where it writes them: the ``cdr_csv`` and ``cdr_custom`` files,
the AMI ``Cdr`` events (in a capture or the raw topic), the CEL files of ``cel_custom``.

Files have no header line: their columns are the module's layout (``cdr_csv``'s is fixed; the
custom modules' are the ``fields =`` line of ``cdr_custom.conf`` / ``cel_custom.conf``, given as
it is written there). A row that cannot be read is kept in the result with its reason, never
dropped silently. Times written as text are the PBX's local time, to the second; times written
as numbers (``start(double)``, CEL's default ``eventtime``) are epoch seconds.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec

from contracts.envelope import Envelope
from contracts.errors import InputError
from reconcile.asterisk import CdrRow, CelEvent

CDR_CSV_FIELDS = ("accountcode,src,dst,dcontext,clid,channel,dstchannel,lastapp,lastdata,start,"
                  "answer,end,duration,billsec,disposition,amaflags,uniqueid,userfield,"
                  "peeraccount,linkedid,sequence")
"""The columns of ``cdr_csv``'s Master.csv with ``loguniqueid``, ``loguserfield`` and
``newcdrcolumns`` on (the Linkedid is in the last group: without it rows cannot be grouped)."""

CEL_CSV_FIELDS = ("eventtype,eventtime,name,num,ani,rdnis,dnid,exten,context,channame,appname,"
                  "appdata,amaflags,accountcode,uniqueid,linkedid,peer,userfield,userdeftype,"
                  "eventextra")
"""The columns of the Master.csv that ``cel_custom.conf``'s sample ``[mappings]`` line writes."""

# AMI Cdr header -> CDR field (cdr_manager's names; LinkedID and Sequence need its [mappings])
_AMI_CDR = {
    "LinkedID": "linkedid", "UniqueID": "uniqueid", "Channel": "channel",
    "DestinationChannel": "dstchannel", "Source": "src", "CallerID": "clid",
    "Destination": "dst", "LastApplication": "lastapp", "LastData": "lastdata",
    "StartTime": "start", "AnswerTime": "answer", "EndTime": "end",
    "Disposition": "disposition", "UserField": "userfield", "Sequence": "sequence",
}
_REQUIRED_CDR = ("linkedid", "uniqueid", "channel", "start", "end", "disposition")
_REQUIRED_CEL = ("eventtype", "eventtime", "channame", "linkedid")


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """Input that could not be read: where it is, why, and the row as it was."""

    where: str
    reason: str
    raw: str


class _BadRow(Exception):
    pass


def parse_fields(spec: str) -> list[str]:
    """A ``fields =`` line of cdr_custom / cel_custom (``start(double)``, ``scenario(uservar)``)
    as column names: a ``(double)`` column is named ``<field>#double``, a user variable by its
    name."""
    names = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            raise InputError(f"empty column name in fields {spec!r}")
        m = re.fullmatch(r"([A-Za-z_][\w-]*)(?:\((\w+)\))?", item)
        if m is None:
            raise InputError(f"cannot read column {item!r} of fields {spec!r}")
        names.append(f"{m[1]}#double" if m[2] == "double" else m[1])
    return names


def _time(value: str, zone: ZoneInfo) -> tuple[float, float] | None:
    """(epoch seconds, resolution) of a time column; None when empty (unanswered)."""
    value = value.strip()
    if not value:
        return None
    try:
        t = float(value)
    except ValueError:
        pass
    else:
        return None if t == 0 else (t, 0.0)  # cdr_custom writes an unanswered call's as 0
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise _BadRow(f"not a time: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return dt.timestamp(), (0.0 if dt.microsecond else 1.0)


def _pick_time(row: Mapping[str, str], name: str, zone: ZoneInfo) -> tuple[float, float] | None:
    """The ``(double)`` column when the layout has one, else the text column."""
    if f"{name}#double" in row:
        return _time(row[f"{name}#double"], zone)
    return _time(row.get(name, ""), zone)


def cdr_row(row: Mapping[str, str], zone: ZoneInfo, where: str) -> CdrRow:
    """A CdrRow from a row's named columns; _BadRow when it cannot be one."""
    for name in _REQUIRED_CDR:
        if not (row.get(name) or row.get(f"{name}#double")):
            raise _BadRow(f"no {name}")
    start = _pick_time(row, "start", zone)
    end = _pick_time(row, "end", zone)
    if start is None or end is None:
        raise _BadRow("no start or end time")
    answer = _pick_time(row, "answer", zone)
    seq = row.get("sequence", "").strip()
    return CdrRow(
        linkedid=row["linkedid"], uniqueid=row["uniqueid"], channel=row["channel"],
        dstchannel=row.get("dstchannel", ""), src=row.get("src", ""), clid=row.get("clid", ""),
        dst=row.get("dst", ""), lastapp=row.get("lastapp", ""), lastdata=row.get("lastdata", ""),
        start=start[0], answer=None if answer is None else answer[0], end=end[0],
        resolution=max(start[1], end[1]), disposition=row["disposition"],
        userfield=row.get("userfield", ""), sequence=int(seq) if seq.isdigit() else 0,
        where=where,
    )


def cel_event(row: Mapping[str, str], zone: ZoneInfo, where: str) -> CelEvent:
    for name in _REQUIRED_CEL:
        if not (row.get(name) or row.get(f"{name}#double")):
            raise _BadRow(f"no {name}")
    t = _pick_time(row, "eventtime", zone)
    if t is None:
        raise _BadRow("no event time")
    return CelEvent(eventtype=row["eventtype"], time=t[0], resolution=t[1],
                    channel=row["channame"], uniqueid=row.get("uniqueid", ""),
                    linkedid=row["linkedid"], exten=row.get("exten", ""),
                    appname=row.get("appname", ""))


class _Line(msgspec.Struct, frozen=True):
    """A line of a file: its columns by name, or why it has none, and the line as it was."""

    where: str
    raw: str
    row: dict[str, str] | None = None
    reason: str = ""


def _csv_rows(path: Path, names: list[str]) -> Iterator[_Line]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        line = 1
        for values in reader:
            where = f"{path.name}:{line}"
            line = reader.line_num + 1
            if not values:
                continue
            raw = ",".join(values)
            if len(values) != len(names):
                yield _Line(where, raw, reason=f"{len(values)} columns, the layout has {len(names)}")
                continue
            yield _Line(where, raw, dict(zip(names, values, strict=True)))


def _json_rows(path: Path) -> Iterator[_Line]:
    """cdr_custom's json format: an object per line; a field written twice (text, then the
    ``(double)``) keeps its last value, the number."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            where = f"{path.name}:{n}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                yield _Line(where, line.rstrip("\n"), reason=f"not JSON: {e}")
                continue
            if not isinstance(obj, dict):
                yield _Line(where, line.rstrip("\n"), reason="not a JSON object")
                continue
            yield _Line(where, line.rstrip("\n"),
                        {k: "" if v is None else str(v) for k, v in obj.items()})


def _read(lines: Iterable[_Line], zone: ZoneInfo, make: Any) -> tuple[list[Any], list[Rejected]]:
    """Each line made into a row by ``make``; those it cannot be, kept with why."""
    out, rejected = [], []
    for line in lines:
        try:
            if line.row is None:
                raise _BadRow(line.reason)
            out.append(make(line.row, zone, line.where))
        except _BadRow as e:
            rejected.append(Rejected(where=line.where, reason=str(e), raw=line.raw))
    return out, rejected


def read_cdr(path: str | Path, zone: ZoneInfo, fields: str = "") -> tuple[list[CdrRow], list[Rejected]]:
    """The rows of a CDR file: cdr_csv's Master.csv (``fields`` empty), a cdr_custom file
    (``fields``: its ``fields =`` line), or cdr_custom's json output (``*.json``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot read CDR file {p}: no such file")
    names = parse_fields(fields or CDR_CSV_FIELDS)
    return _read(_json_rows(p) if p.suffix == ".json" else _csv_rows(p, names), zone, cdr_row)


def read_cel(path: str | Path, zone: ZoneInfo, fields: str = "") -> tuple[list[CelEvent], list[Rejected]]:
    """The events of a CEL file written by cel_custom: the sample mapping's columns
    (``fields`` empty) or the columns of an advanced ``fields =`` line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot read CEL file {p}: no such file")
    return _read(_csv_rows(p, parse_fields(fields or CEL_CSV_FIELDS)), zone, cel_event)


def ami_cdr_rows(frames: Iterable[tuple[str, Envelope, str]], zone: ZoneInfo
                 ) -> tuple[list[CdrRow], list[Rejected]]:
    """The CDR rows of the AMI ``Cdr`` events among ``frames`` (where, envelope, the call its
    message key names or ""), in order. A Cdr event names its call through cdr_manager's
    ``[mappings]`` (``LinkedID``); without it, by the raw topic's message key, else by the call
    whose channel has the row's UniqueID, as the stream's other events tell."""
    call_of: dict[str, str] = {}
    pending: list[tuple[str, dict[str, str], str]] = []
    for where, env, key in frames:
        if not env.is_event:
            continue
        if env.name != "Cdr":
            uid, lid = env.get("Uniqueid"), env.get("Linkedid")
            if uid and lid:
                call_of.setdefault(uid, lid)
            continue
        pending.append((where, {_AMI_CDR[k]: v for k, v in env.headers if k in _AMI_CDR}, key))
    lines = []
    for where, row, key in pending:
        if not row.get("linkedid"):
            row["linkedid"] = key or call_of.get(row.get("uniqueid", ""), "")
        lines.append(_Line(where, json.dumps(row, ensure_ascii=False), row))
    return _read(lines, zone, cdr_row)
