"""MkDocs hooks (``hooks:`` in mkdocs.yml): the reference pages, written from the code at every build.

Whatever the code defines is read from the code, never copied into a page, so the reference cannot drift:
config keys from the frozen dataclasses of ``edge_agent.config`` (type, default, range and choices from each
field's metadata, the description from ``metadata["doc"]``), status fields and metrics from
``edge_agent.telemetry.catalogue()``, topics, the wire formats, the bundle manifest, upload records, receipts
and rollouts from the contract modules (their docstrings and the tables they validate with), the command
lines from click, and the example configs from ``examples/``. A page is a ``File.generated`` (nothing is
written into docs/); one that cannot be made fails the build with the reason.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import io
import pkgutil
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "edge_agent.contract"


# ------------------------------------------------------------------------------------------------ markdown
def cell(text: object) -> str:
    """``text`` fit for a table cell: one line, pipes outside code spans escaped (inside, they are literal)."""
    return _outside_code(" ".join(str(text).split()), lambda part: part.replace("|", "\\|"))


def code(text: object) -> str:
    """``text`` as an inline code span."""
    s = str(text)
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj|py:\w+):`~?([^`]+)`")
_BORDER = re.compile(r"=+( +=+)+")


def _outside_code(line: str, change: Callable[[str], str]) -> str:
    """``line`` with ``change`` applied to the text outside its code spans."""
    parts = _CODE_SPAN.split(line)
    out, i = [], 0
    while i < len(parts):
        if i % 3 == 0:
            out.append(change(parts[i]))
            i += 1
        else:
            out.append(parts[i] + parts[i + 1] + parts[i])
            i += 2
    return "".join(out)


def _escape_html(line: str) -> str:
    """``<`` outside code spans would start an HTML tag in Markdown (``vib/<device>/...``)."""
    return _outside_code(line, lambda part: part.replace("<", "&lt;"))


def rst(doc: str | None) -> str:
    """A docstring (reStructuredText as this project writes it) as Markdown: literal blocks (``::``) and simple
    tables fenced, section titles bold, Sphinx roles as code, ``<`` outside code escaped."""
    if not doc:
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and nxt and set(nxt) <= set("-=~^") and len(nxt) >= len(line.strip()) >= 2 \
                and not _BORDER.fullmatch(nxt.strip()):
            out += ["", f"**{_escape_html(line.strip())}**", ""]
            i += 2
            continue
        if _BORDER.fullmatch(line.strip()):
            block, borders = [line], 1
            i += 1
            while i < len(lines) and borders < 3:
                block.append(lines[i])
                borders += bool(_BORDER.fullmatch(lines[i].strip()))
                i += 1
            out += ["", "```text", textwrap.dedent("\n".join(block)), "```", ""]
            continue
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_escape_html(_ROLE.sub(r"``\1``", head)) + ":")
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i][:1] in (" ", "\t")):
                block.append(lines[i])
                i += 1
            out += ["", "```text", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        indent = len(line) - len(line.lstrip())
        if line.rstrip().endswith(":") and not line.lstrip().startswith(("* ", "- ")) and \
                len(nxt) - len(nxt.lstrip()) >= indent + 4 and nxt.strip():
            out.append(_escape_html(_ROLE.sub(r"``\1``", line)))  # "Attributes:", "Counters (...):" and their items
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            out += ["", "```text", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        out.append(_escape_html(_ROLE.sub(r"``\1``", line)))
        i += 1
    return "\n".join(out).strip() + "\n"


def guide(text: str, uri: str, here: str = "reference") -> str:
    """A link from a generated page in ``here`` to the hand-written page ``uri`` (relative to docs/, with an
    optional ``#anchor``), or plain text while that page does not exist."""
    page = uri.split("#")[0]
    if not (ROOT / "docs" / page).is_file():
        return text
    depth = len(Path(here).parts)
    return f"[{text}]({'../' * depth}{uri})"


def first_line(doc: str | None) -> str:
    """The first paragraph of a docstring, as one line of Markdown (its ``::`` read as ``:``)."""
    if not doc:
        return ""
    para = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    para = para[:-1] if para.endswith("::") else para
    return _escape_html(_ROLE.sub(r"``\1``", para))


def own_doc(obj: object) -> str | None:
    """``obj``'s docstring, None for the signature a dataclass makes up when it has none."""
    doc = inspect.getdoc(obj)
    if doc and isinstance(obj, type) and doc.startswith(obj.__name__ + "("):
        return None
    return doc


def _binary_size(value: object) -> str:
    """``64 MiB`` for a whole number of MiB, GiB or TiB (bounds and defaults are often written as such)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 << 20:
        for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB")):
            if value % (1 << shift) == 0:
                return f"{value >> shift} {unit}"
    return ""


def literal(value: object) -> str:
    """A default or a bound as it is written in TOML."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return str(value)


def constants(module: types.ModuleType) -> list[tuple[str, str, str]]:
    """The public UPPER_CASE constants of ``module`` with their values and ``#:`` comments, in source order."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return []
    out, comment = [], []
    for line in source.splitlines():
        if line.startswith("#:"):
            comment.append(line[2:].strip())
            continue
        m = re.match(r"([A-Z][A-Z0-9_]*)\s*(?::[^=]+)?=", line)
        if m and hasattr(module, m.group(1)):
            value = getattr(module, m.group(1))
            if isinstance(value, int | float | str | bytes | tuple | frozenset) and not isinstance(value, bool):
                size = _binary_size(value) if re.search("BYTES|SIZE", m.group(1)) else ""
                shown = repr(value) + (f" ({size})" if size else "")
                inline = re.search(r"\s#\s*(?!noqa)(.+)$", line)
                doc = " ".join([*comment, inline.group(1) if inline else ""]).strip()
                out.append((m.group(1), shown if len(shown) <= 120 else shown[:117] + "...", doc))
        comment = []
    return out


def constants_table(module: types.ModuleType) -> str:
    rows = [(code(name), code(value), rst(doc).strip()) for name, value, doc in constants(module)]
    return table(("constant", "value", ""), rows) if rows else ""


def module_section(name: str, level: int = 2) -> str:
    """A module's docstring under a heading naming it."""
    module = importlib.import_module(name)
    return f"{'#' * level} `{name}`\n\n{rst(module.__doc__) or '(no module docstring)'}\n"


def public_api(module: types.ModuleType) -> str:
    """The classes and functions ``module`` defines, with the first line of their docstrings."""
    rows = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            kind = "class" if inspect.isclass(obj) else "function"
            rows.append((code(name), kind, first_line(own_doc(obj))))
    return table(("name", "", "what it is"), rows) if rows else ""


def contract_modules() -> list[str]:
    """Every module of the contract package, found by listing it."""
    package = importlib.import_module(CONTRACT)
    return sorted(m.name for m in pkgutil.walk_packages(package.__path__, CONTRACT + ".")
                  if not m.name.rsplit(".", 1)[-1].startswith("_"))


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class _Section:
    heading: str
    cls: type
    rows: list[tuple[str, str, str, str, str]]
    note: str = ""


def _bound(value: object, key: str) -> str:
    size = _binary_size(value) if "bytes" in key else ""
    return f"{literal(value)} ({size})" if size else literal(value)


def _unwrap(tp: object) -> tuple[object, bool]:
    """(the type inside ``X | None``, whether None was allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _type_name(tp: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        return f"list of {_type_name(inner)}s" if inner in names else "list"
    if typing.get_origin(tp) is typing.Literal:
        return "string"
    return getattr(tp, "__name__", str(tp))


def _field_comments(cls: type) -> dict[str, str]:
    """The comments written beside (or just above) each field in the class's source: the description until a
    field declares ``metadata["doc"]``."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    lines = source.splitlines()
    for no, line in enumerate(lines, 1):
        m = re.match(r"\s+([a-z_][a-z0-9_]*)\s*:", line)
        if not m:
            continue
        above, k = [], no - 1
        while k >= 1 and lines[k - 1].strip().startswith("#") and k in comments:
            above.insert(0, comments[k])
            k -= 1
        text = " ".join([*above, comments.get(no, "")]).strip()
        if text and not text.startswith(("noqa", "type:")):
            out[m.group(1)] = text
    return out


def _config_sections(cls: type, heading: str, prefix: str, out: list[_Section], sensor_tables: tuple[str, ...],
                     in_sensor: bool = False) -> None:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    section = _Section(heading, cls, [])
    out.append(section)
    nested: list[tuple[str, type, bool]] = []
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        if f.metadata.get("internal") or not f.init or tp is Path:
            continue  # not a key of the file (the config's own path, its directory)
        if typing.get_origin(tp) is tuple and typing.get_args(tp) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            nested.append((f.name, typing.get_args(tp)[0], True))
            continue
        if dataclasses.is_dataclass(tp):
            nested.append((f.name, tp, False))
            continue
        meta = f.metadata
        if f.default is not dataclasses.MISSING:
            default = _bound(f.default, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = literal(f.default_factory())
        else:
            default = "required"
        allowed = []
        if meta.get("choices") is not None:
            allowed.append(", ".join(literal(c) for c in meta["choices"]))
        if meta.get("lo") is not None or meta.get("hi") is not None:
            allowed.append(f"{_bound(meta.get('lo'), f.name)} .. {_bound(meta.get('hi'), f.name)}")
        doc = meta.get("doc") or comments.get(f.name, "")
        section.rows.append((code(prefix + f.name), _type_name(tp) + (" or unset" if optional else ""),
                             code(default) if default != "required" else "**required**", "; ".join(allowed),
                             rst(doc).strip()))
    for name, sub, array in sorted(nested, key=lambda n: n[2]):  # tables first, arrays of tables last
        if array:  # [[sensors]]: the per-sensor keys, written relative to each sensor's table
            _config_sections(sub, f"[[{name}]]", "", out, sensor_tables, in_sensor=True)
            continue
        key = prefix + name
        if in_sensor:
            top = key.split(".")[0]
            note = (f"or `[{key}]` at the top level: every sensor's default" if top in sensor_tables else "")
            sub_heading = f"[sensors.{key}]"
        else:
            note, sub_heading = "", f"[{key}]"
        before = len(out)
        _config_sections(sub, sub_heading, key + ".", out, sensor_tables, in_sensor)
        out[before].note = note


def config_page() -> str:
    from edge_agent import config

    sensor_tables = (*getattr(config, "SENSOR_SECTIONS", ()), "uploads")
    sections: list[_Section] = []
    _config_sections(config.AgentConfig, "Top level", "", sections, sensor_tables)
    out = [
        "# Configuration keys\n",
        "Generated from `edge_agent/config.py` at every build: every key the agent reads, its type, its default, "
        "the values it accepts, and what it does. The agent refuses an unknown key, a wrong type or a value out of "
        "range at start (`edge-agent validate-config FILE`), naming the key. How the file is laid out (one sensor, "
        "or a gateway of `[[sensors]]` whose top-level tables are every sensor's defaults) is in "
        f"{guide('Configure sensors', 'technician/sensors.md')}.\n",
        f"{rst(own_doc(config.AgentConfig))}\n",
    ]
    for s in sections:
        if not s.rows and not own_doc(s.cls):
            continue
        out.append(f"## `{s.heading}`\n" if s.heading != "Top level" else "## Top level\n")
        if s.note:
            out.append(f"({s.note})\n")
        doc = own_doc(s.cls)
        if doc and s.cls is not config.AgentConfig:
            out.append(rst(doc))
        if s.rows:
            out.append(table(("key", "type", "default", "accepts", "meaning"), s.rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ telemetry
_NO_TELEMETRY = """# {title}

`edge_agent.telemetry` could not be imported when these pages were built, so the {what} cannot be listed
here yet: {error}.
"""


def _catalogue():
    try:
        from edge_agent import telemetry
    except ImportError as exc:  # the module is new: a build before it lands says so instead of failing
        return None, exc
    return telemetry, None


def status_page() -> str:
    telemetry, error = _catalogue()
    if telemetry is None:
        return _NO_TELEMETRY.format(title="Status fields", what="status fields", error=error)
    rows_gw, rows_sensor = [], []
    for e in telemetry.catalogue():
        metric = code(e.metric) if e.metric else f"— ({e.excluded or 'status only'})"
        row = (code(e.path), e.kind or "text", metric, e.help)
        (rows_sensor if e.path.startswith("sensors.") else rows_gw).append(row)
    header = ("field", "kind", "metric", "meaning")
    return "\n".join([
        "# Status fields\n",
        "Generated from `edge_agent.telemetry.catalogue()`, the one declaration the status document and "
        "`/metrics` are both made from. The same document is the status file (`edge-agent status`), the retained "
        "MQTT status (`vib/<device>/status` per sensor, `vib/gateway/<gw>/status` for the gateway's summary), "
        "`/api/status` on the status page, and the source of every [metric](metrics.md). A `*` in a path is a "
        "mapping's key (`sensors.*` is the device id, `sinks.*` an alert sink, `uploads_kept.*` a kind of "
        "window). A number that is not exported as a metric says why.\n",
        rst(telemetry.__doc__),
        "## The gateway\n", table(header, rows_gw),
        "## Each sensor\n", table(header, rows_sensor),
    ])


def metrics_page() -> str:
    telemetry, error = _catalogue()
    if telemetry is None:
        return _NO_TELEMETRY.format(title="Metrics", what="metrics", error=error)
    family_help = getattr(telemetry, "FAMILY_HELP", {})
    prefix = getattr(telemetry, "PREFIX", "")
    families: dict[str, dict] = {}
    for e in telemetry.catalogue():
        if not e.metric:
            continue
        fam = families.setdefault(e.metric, {"kind": e.kind, "labels": [], "from": [],
                                             "help": family_help.get(e.metric.removeprefix(prefix), e.help)})
        fixed = dict(getattr(e, "fixed", {}) or {})
        states = tuple(getattr(e, "states", ()) or ())
        info = dict(getattr(e, "info", {}) or {})
        labels = [*e.labels, *fixed, *(["state"] if len(states) > 1 else []), *info]
        fam["labels"] += [lb for lb in labels if lb not in fam["labels"]]
        source = code(e.path) + (" " + ", ".join(f'{k}="{v}"' for k, v in fixed.items()) if fixed else "")
        if states:
            source += f" (one series per state: {', '.join(states)})" if len(states) > 1 else f" (1 when {states[0]})"
        if getattr(e, "scale", 1.0) != 1.0:
            source += f" × {e.scale:g}"
        fam["from"].append(source)
    rows = [(code(name), f["kind"], ", ".join(f["labels"]), f["help"], "; ".join(f["from"]))
            for name, f in families.items()]
    rows += [(code(name), kind, "", help_text, "the agent itself") for name, kind, help_text in _rendered_only(families)]
    return "\n".join([
        "# Metrics\n",
        "Generated from `edge_agent.telemetry.catalogue()`: every Prometheus family `GET /metrics` serves (text "
        "exposition format 0.0.4, on the status page's port), with its type, labels, help and the status field(s) "
        "it is read from. Every sensor series carries `sensor=\"<device>\"`; a field missing from a sensor's "
        "status (no model yet) is left out rather than invented. How to scrape it: "
        f"{guide('Prometheus', 'maintenance/prometheus.md')}.\n",
        table(("metric", "type", "labels", "help", "from the status field"), rows),
    ])


def _rendered_only(families: dict) -> Iterator[tuple[str, str, str]]:
    """Families ``edge_agent.metrics.render`` adds beside the catalogue (read from its output on an empty
    status document)."""
    from edge_agent import metrics

    text = metrics.render({}, status_age_s=0.0)
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if name not in families:
            yield name, kind, helps.get(name, "")


# ------------------------------------------------------------------------------------------------ contract
_PLACEHOLDER = {"device": "<device>", "gateway": "<gw>", "target": "<target>", "rollout_id": "<rollout_id>",
                "index": "<i>"}


def _topic_functions() -> Iterator[tuple[str, str, list[str], str]]:
    """Every ``*_topic`` function of the contract: (module, name, the topics it builds, its docstring)."""
    for modname in contract_modules():
        module = importlib.import_module(modname)
        leaves = tuple(getattr(module, "DEVICE_LEAVES", ()))
        doc_leaves = tuple(re.findall(r"vib/gateway/<gw>/(\w+)", module.__doc__ or ""))
        for name, fn in vars(module).items():
            if not (inspect.isfunction(fn) and name.endswith("_topic") and not name.startswith("_")
                    and fn.__module__ == modname):
                continue
            params = list(inspect.signature(fn).parameters)
            built = []
            for leaf in (leaves + doc_leaves if "leaf" in params else (None,)):
                args = {p: (leaf if p == "leaf" else p.upper().replace("_", "")) for p in params}
                try:
                    topic = fn(**args)
                except Exception:  # noqa: BLE001 (a leaf this function does not take)
                    continue
                if not isinstance(topic, str):
                    continue
                for p in params:
                    if p != "leaf":
                        topic = topic.replace(p.upper().replace("_", ""), _PLACEHOLDER.get(p, f"<{p}>"))
                if topic not in built:
                    built.append(topic)
            yield modname, name, built, own_doc(fn) or ""


def topics_page() -> str:
    topics = importlib.import_module(f"{CONTRACT}.topics")
    rows = [(code(f"{mod.rsplit('.', 1)[-1]}.{name}"), "<br>".join(code(t) for t in built) or "—", first_line(doc))
            for mod, name, built, doc in _topic_functions()]
    return "\n".join([
        "# MQTT topics\n",
        f"Generated from `{topics.__name__}` (and every other contract module that builds a topic).\n",
        rst(topics.__doc__),
        "## The functions that build them\n",
        "Each topic is built by one function (called here with placeholder ids); nothing else writes a topic "
        "by hand.\n",
        table(("function", "topic", ""), rows),
        "## Ids and limits\n",
        constants_table(topics),
    ])


def _wire_modules() -> list[str]:
    """The wire-format modules: the one that defines ``Frame`` (the block of samples every wire format decodes
    to) and every contract module that uses it, in the order the package's docstring lists them."""
    names = [n for n in contract_modules() if not n.startswith(f"{CONTRACT}.recordings")]
    found = [n for n in names if isinstance(vars(importlib.import_module(n)).get("Frame"), type)]
    if not found:
        raise PluginError(f"docs/hooks.py: no module of {CONTRACT} defines or uses Frame ({', '.join(names)}): "
                          f"say in _wire_modules where the wire formats are now")
    listed = importlib.import_module(CONTRACT).__doc__ or ""

    def order(name: str) -> tuple[int, int, str]:
        leaf = name.rsplit(".", 1)[-1]
        defines = vars(importlib.import_module(name))["Frame"].__module__ == name
        at = listed.find(f"``{leaf}``")
        return (0 if defines else 1, at if at >= 0 else len(listed), name)

    return sorted(found, key=order)


def wire_page() -> str:
    out = ["# Wire formats\n",
           "Generated from the docstrings of the contract's wire modules, found by listing "
           f"`{CONTRACT}`: how a sensor's samples travel to the gateway (binary frames, CSV lines, MQTT payloads "
           "and a sensor's own JSON) and the limits checked before anything is parsed.\n"]
    for name in _wire_modules():
        module = importlib.import_module(name)
        out.append(module_section(name))
        if api := public_api(module):
            out += ["### Classes and functions\n", api]
        for cls_name, cls in vars(module).items():
            if inspect.isclass(cls) and cls.__module__ == name and not cls_name.startswith("_") and own_doc(cls):
                out += [f"#### `{cls_name}`\n", rst(own_doc(cls))]
        if consts := constants_table(module):
            out += ["### Constants\n", consts]
    return "\n".join(out)


def _schema_rows(schema: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, expected in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(expected, dict):
            yield code(path), "object" + (" (keys below)" if expected else "")
            yield from _schema_rows(expected, path)
        else:
            yield code(path), _json_type(expected)


def _json_type(expected: object) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object",
             type(None): "null"}
    if isinstance(expected, tuple):
        kinds = []
        for t in expected:
            name = names.get(t, getattr(t, "__name__", str(t)))
            if not (name == "integer" and float in expected):
                kinds.append(name)
        return " or ".join(dict.fromkeys(kinds))
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def _dataclass_rows(cls: type) -> list[tuple[str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = ("required" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   else literal(f.default if f.default is not dataclasses.MISSING else f.default_factory()))
        rows.append((code(f.name), code(_shown_type(hints[f.name])), default))
    return rows


def bundle_page() -> str:
    bundle = importlib.import_module(f"{CONTRACT}.bundle")
    preprocess = importlib.import_module(f"{CONTRACT}.preprocess")
    spec = preprocess.PreprocessSpec
    return "\n".join([
        "# Model bundle\n",
        f"Generated from `{bundle.__name__}` and `{preprocess.__name__}`. How the trainer fills the manifest, "
        f"and the keys it writes beyond the required ones: {guide('Train a model', 'central/train.md#the-model-bundle')}.\n",
        rst(bundle.__doc__),
        "## Required manifest keys\n",
        "A manifest without one of these keys, or with one of the wrong type, is refused by `Bundle.load` "
        "(`edge-agent deploy`, `validate-config`, the running agent, `trainer inspect`) naming the key.\n",
        table(("key", "type"), list(_schema_rows(bundle.MANIFEST_SCHEMA))),
        f"## `preprocess`: `{spec.__name__}`\n",
        rst(own_doc(spec)),
        table(("key", "type", "default"), _dataclass_rows(spec)),
        "## Constants\n",
        constants_table(bundle),
    ])


def upload_record_page() -> str:
    record = importlib.import_module(f"{CONTRACT}.upload_record")
    fields_by_schema = getattr(record, "FIELDS", {})
    latest = getattr(record, "SCHEMA_VERSION", max(fields_by_schema, default=0))
    older = [s for s in sorted(fields_by_schema) if s != latest]
    rows = []
    for name, expected in fields_by_schema.get(latest, {}).items():
        since = ", ".join(str(s) for s in older if name in fields_by_schema[s])
        rows.append((code(name), _json_type(expected), f"in schema {since} too" if since else f"new in schema {latest}"))
    out = ["# Upload records and receipts\n",
           f"Generated from `{record.__name__}` and the contract's receipt module.\n",
           rst(record.__doc__),
           f"## Fields checked (schema {latest})\n",
           table(("field", "JSON type", ""), rows),
           "## Constants\n", constants_table(record)]
    for name in contract_modules():
        if name.rsplit(".", 1)[-1].startswith("receipt"):
            out += [module_section(name), constants_table(importlib.import_module(name))]
    return "\n".join(out)


def rollout_page() -> str:
    out = ["# Rollout messages\n",
           "Generated from the contract's rollout and signing modules: how `trainer publish` sends a signed bundle "
           f"and how a gateway checks it. What the gateway then does with it: "
           f"{guide('the fleet loop', 'central/fleet.md#rollout-on-the-gateway')}.\n"]
    for name in contract_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith(("rollout", "signing")):
            out += [module_section(name), constants_table(importlib.import_module(name))]
    return "\n".join(out)


#: The contract modules each generated page covers (the rest are listed on the contract page in full).
def _covered() -> dict[str, str]:
    covered = {f"{CONTRACT}.topics": "topics.md", f"{CONTRACT}.bundle": "bundle.md",
               f"{CONTRACT}.upload_record": "upload-record.md"}
    covered |= {n: "wire.md" for n in _wire_modules()}
    for n in contract_modules():
        leaf = n.rsplit(".", 1)[-1]
        if leaf.startswith("receipt"):
            covered[n] = "upload-record.md"
        if leaf.startswith(("rollout", "signing")):
            covered[n] = "rollout.md"
    return covered


def contract_page() -> str:
    covered = _covered()
    package = importlib.import_module(CONTRACT)
    rows, rest = [], []
    for name in contract_modules():
        module = importlib.import_module(name)
        page = covered.get(name)
        rows.append((code(name), first_line(module.__doc__), f"[{page}]({page})" if page else "below"))
        if page is None:
            rest.append(module_section(name, level=3))
    return "\n".join([
        "# Contract modules\n",
        f"Generated by listing `{CONTRACT}`: what the trainer, the gateway and the simulator share, each defined "
        "once.\n",
        rst(package.__doc__),
        "## Modules\n",
        table(("module", "what it is", "documented on"), rows),
        "## The others\n" if rest else "",
        *rest,
    ])


# ------------------------------------------------------------------------------------------------ CLI
def cli_page() -> str:
    import click

    out = ["# Command lines\n",
           "Generated from the click definitions of the programs `pip install` puts on PATH (the package's "
           "console scripts): each block is what `--help` prints.\n"]
    for prog, modname in _programs():
        group = _click_command(click, importlib.import_module(modname))
        ctx = click.Context(group, info_name=prog, max_content_width=100, terminal_width=100,
                            **group.context_settings)
        out.append(f"## `{prog}`\n")
        for path, cmd_ctx in _commands(click, ctx, (prog,)):
            if len(path) > 1:
                out.append(f"### `{' '.join(path)}`\n")
            out.append("```text\n" + cmd_ctx.command.get_help(cmd_ctx) + "\n```\n")
    return "\n".join(out)


def _programs() -> list[tuple[str, str]]:
    """(program, module) of each console script in pyproject.toml."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    return [(prog, target.split(":")[0]) for prog, target in scripts.items()]


def _click_command(click, module: types.ModuleType):
    """The module's entry point if it is a click command, else its one top-level click group."""
    main = getattr(module, "main", None)
    if isinstance(main, click.Command):
        return main
    groups = [v for v in vars(module).values() if isinstance(v, click.Group)]
    top = [g for g in groups if not any(g in h.commands.values() for h in groups if h is not g)]
    if len(top) != 1:
        raise PluginError(f"{module.__name__}: cannot tell its click command ({len(top)} top-level groups)")
    return top[0]


def _commands(click, ctx, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command under ``ctx``'s (depth first), each with a context whose parents are the real groups (so
    usage lines and help option names are what the program prints)."""
    yield path, ctx
    cmd = ctx.command
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from _commands(click, click.Context(sub, info_name=name, parent=ctx, **sub.context_settings),
                                     (*path, name))


# ------------------------------------------------------------------------------------------------ examples
def examples_page() -> str:
    out = ["# Example configurations\n",
           "The files in `examples/`, as they are in the repository (included at build time). "
           "`edge-agent validate-config FILE` checks an agent config and every bundle it names.\n"]
    for path in sorted((ROOT / "examples").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            lang = {".toml": "toml", ".conf": "text"}.get(path.suffix, "text")
            out += [f"## `examples/{path.name}`\n", f"```{lang}\n{path.read_text(encoding='utf-8').rstrip()}\n```\n"]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ source layout
def docstring_of(module: str) -> str | None:
    """A module's docstring, read from its source without importing it (the trainer's modules import TensorFlow):
    a file of this repository (``bench.soak``, ``tests.test_architecture``), else an installed module."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            break
    else:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise PluginError(f"docs/hooks.py: no Python module {module!r}")
        path = Path(spec.origin)
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


#: The folders the source layout lists, in the order of the data (product packages, then the tools around them).
LAYOUT_FOLDERS = ("edge_agent", "trainer", "firmware_sim", "bench", "scripts")


def modules_page() -> str:
    out = ["# Source layout\n",
           "Generated by listing the source tree: every module with the first paragraph of its docstring. The tree "
           "follows the data: a source fills a ring, windows are cut and scored, the score drives alerts and "
           "uploads; what the trainer, the gateway and the simulator share is in `edge_agent/contract/`.\n"]
    for top in LAYOUT_FOLDERS:
        folder = ROOT / top
        if not folder.is_dir():
            continue
        for package in sorted({p.parent for p in folder.rglob("*.py")}, key=lambda d: d.relative_to(ROOT).parts):
            rel = package.relative_to(ROOT)
            if any(part.startswith((".", "_")) for part in rel.parts):
                continue
            rows = []
            for path in sorted(package.glob("*.py")):
                doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
                rows.append((code(path.name), first_line(doc)))
            out += [f"## `{rel.as_posix()}/`\n", table(("module", "what it is"), rows)]
    return "\n".join(out)


_MARKER = re.compile(r"^<!-- (docstring|constants|fields) ([\w.]+) -->$", re.M)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill a guide's markers from the code: ``<!-- docstring MODULE -->`` (the module's docstring),
    ``<!-- constants MODULE -->`` (its public constants), ``<!-- fields MODULE.CLASS -->`` (a dataclass's fields)."""

    def fill(m: re.Match) -> str:
        what, name = m.groups()
        try:
            if what == "docstring":
                doc = docstring_of(name)
                if not doc:
                    raise PluginError(f"{name} has no module docstring")
                return rst(doc)
            if what == "constants":
                return constants_table(importlib.import_module(name))
            module, _, cls_name = name.rpartition(".")
            cls = getattr(importlib.import_module(module), cls_name)
            hints = typing.get_type_hints(cls)
            rows = [(code(f.name), code(_shown_type(hints[f.name]))) for f in dataclasses.fields(cls)]
            return rst(own_doc(cls)) + "\n" + table(("field", "type"), rows)
        except PluginError as exc:
            raise PluginError(f"{page.file.src_uri}: {m.group(0)}: {exc}") from None
        except Exception as exc:
            raise PluginError(f"{page.file.src_uri}: {m.group(0)}: {type(exc).__name__}: {exc}") from exc

    return _MARKER.sub(fill, markdown)


def _shown_type(tp: object) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


# ------------------------------------------------------------------------------------------------ the hook
PAGES: dict[str, Callable[[], str]] = {
    "reference/config.md": config_page,
    "reference/status.md": status_page,
    "reference/metrics.md": metrics_page,
    "reference/topics.md": topics_page,
    "reference/wire.md": wire_page,
    "reference/bundle.md": bundle_page,
    "reference/upload-record.md": upload_record_page,
    "reference/rollout.md": rollout_page,
    "reference/contract.md": contract_page,
    "reference/cli.md": cli_page,
    "reference/modules.md": modules_page,
    "reference/examples.md": examples_page,
}


def on_files(files: Files, config) -> Files:
    """Add the generated reference pages (a page of the same name in docs/ would hide one: refused)."""
    for uri, make in PAGES.items():
        if files.get_file_from_path(uri) is not None:
            raise PluginError(f"docs/{uri} is generated by docs/hooks.py: remove the file")
        try:
            content = make()
        except PluginError:
            raise
        except Exception as exc:  # the build fails, naming the page and the reason
            raise PluginError(f"docs/hooks.py could not generate {uri}: {type(exc).__name__}: {exc}") from exc
        files.append(File.generated(config, uri, content=content))
    return files
