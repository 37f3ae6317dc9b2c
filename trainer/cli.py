"""``trainer``: train and export a model bundle, or inspect one.

``main()`` configures logging once and dispatches to click commands; each command turns its
options into typed objects and calls :func:`trainer.pipeline.run`. TensorFlow is imported (through
:mod:`trainer.tfenv`) only once the inputs are checked, so a wrong file is refused at once and
``trainer inspect`` stays light.

The gateway's install (``pip install '.[agent]'``) puts ``trainer`` on PATH too, without TensorFlow, Keras,
matplotlib or pyarrow (``WORKSTATION_ONLY``). There ``trainer --help`` and ``trainer inspect`` work, and a command
that needs one of them says in one line that the trainer needs the workstation install and that a gateway runs
``edge-agent``: the fleet commands' modules (``LAZY_COMMANDS``) are imported only when their command is asked for,
and a missing workstation package is an error line (exit code 1), not a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from edge_agent.contract.errors import BundleError
from edge_agent.contract.recordings import FORMATS, DataFormatError
from trainer import tfenv

log = logging.getLogger(__name__)

#: The packages only the workstation install brings (pyproject.toml's ``trainer`` extra), by import name.
WORKSTATION_ONLY = {"tensorflow": "TensorFlow", "keras": "Keras", "matplotlib": "matplotlib", "pyarrow": "pyarrow"}
#: Commands defined in other modules (trainer/collect.py, retrain.py, publish.py), imported when asked for.
LAZY_COMMANDS = ("collect", "retrain", "keygen", "publish")


def _lazy_commands(name: str) -> list[click.Command]:
    """The commands of the module that defines ``name`` (one of ``LAZY_COMMANDS``), imported now."""
    if name == "collect":
        from trainer import collect

        return [collect.command()]
    if name == "retrain":
        from trainer import retrain

        return [retrain.command()]
    from trainer import publish

    return list(publish.commands())


def workstation_only(exc: ModuleNotFoundError, command: str | None) -> click.ClickException | None:
    """The error to show when ``exc`` is a missing workstation-only package (None when it is something else)."""
    package = WORKSTATION_ONLY.get((exc.name or "").partition(".")[0])
    if package is None:
        return None
    what = f"trainer {command}" if command else "trainer"
    return click.ClickException(
        f"{what} needs {package}, which this install does not have: the trainer runs on a workstation installed "
        f"with pip install '.[trainer]'; a gateway (pip install '.[agent]') runs edge-agent, not trainer")


class TrainerGroup(click.Group):
    """The ``trainer`` group: imports ``LAZY_COMMANDS`` when asked for, and turns a missing workstation package
    (``WORKSTATION_ONLY``) into one line on stderr and exit code 1 instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            try:
                made = _lazy_commands(cmd_name)
            except ModuleNotFoundError as exc:
                error = workstation_only(exc, cmd_name)
                if error is None:
                    raise
                return _unavailable(cmd_name, error)
            for command in made:
                self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            error = workstation_only(exc, ctx.invoked_subcommand)
            if error is None:
                raise
            raise error from exc


def _unavailable(name: str, error: click.ClickException) -> click.Command:
    """A stand-in for a command whose module needs a package this install lacks: listed by ``--help`` with a
    note, it fails with ``error`` whatever its arguments."""

    def refuse() -> None:
        raise error

    return click.Command(name, callback=refuse, add_help_option=False, short_help="(workstation install only)",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class DatasetArg(click.ParamType):
    """A dataset argument: ``s3://bucket/prefix`` (kept as text: ``trainer.dataset.location`` reaches it, and refuses
    other schemes naming the ones it takes) or a path that must exist (a ``Path``), like ``click.Path(exists=True)``."""

    name = "PATH|s3://BUCKET/PREFIX"

    def __init__(self, file_okay: bool = True) -> None:
        self._path = click.Path(exists=True, file_okay=file_okay, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value:
            return value
        return self._path.convert(value, param, ctx)


def endpoint_option():
    """``--endpoint URL``: the S3-compatible store of an ``s3://`` dataset (default: ``AWS_ENDPOINT_URL``, else AWS)."""
    return click.option("--endpoint", default=None, metavar="URL",
                        help="S3 endpoint of an s3:// dataset, for S3-compatible stores (MinIO, Ceph, Garage, "
                             "SeaweedFS): http(s)://host:port [default: $AWS_ENDPOINT_URL, else AWS S3].")


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _bands(value: str | None) -> tuple[tuple[float, float], ...]:
    """``"100-500,500-2000"`` -> ((100.0, 500.0), (500.0, 2000.0))."""
    bands = []
    for part in _csv(value):
        try:
            low, high = (float(x) for x in part.split("-"))
        except ValueError as exc:
            raise click.BadParameter(f"FFT band {part!r} is not LOW-HIGH in Hz") from exc
        bands.append((low, high))
    return tuple(bands)


def _params(values: tuple[str, ...]) -> dict:
    """``("k=3", "q=0.99")`` -> {"k": 3.0, "q": 0.99}."""
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE")
        try:
            out[key.strip()] = float(raw)
        except ValueError as exc:
            raise click.BadParameter(f"{item!r}: value must be a number") from exc
    return out


@click.group(cls=TrainerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v: debug, and TensorFlow's own notices).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Train anomaly-detection autoencoders on vibration data and export TFLite bundles."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # TensorFlow's native start-up and conversion notices (trainer.tfenv); -v shows them
        ctx.call_on_close(tfenv.notice_filter().start().close)


@cli.command()
@click.option("--data", "data", required=True, type=DatasetArg(),
              help="File or folder, or a collected dataset: a folder or s3://bucket/prefix.")
@endpoint_option()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory (replaced atomically).")
@click.option("--model", "architecture", type=click.Choice(["auto", "lstm", "conv1d"]), default="auto", show_default=True,
              help="auto: LSTM up to 64 steps per window, Conv1D beyond.")
@click.option("--units", default="32,16", show_default=True, help="LSTM units / Conv1D filters per encoder layer.")
@click.option("--mode", type=click.Choice(["raw", "features"]), default=None,
              help="[default: from the data: features at >= 1 kHz, raw for tables]")
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="Steps per window [default: 10, or one period of a periodic table].")
@click.option("--hop", type=click.IntRange(min=1), default=None, help="Steps between served windows [default: window].")
@click.option("--block", type=click.IntRange(min=2), default=None,
              help="Samples per step, features mode [default: 0.1 s, or a tenth of a shorter snapshot].")
@click.option("--features", default=None,
              help="Per-block features, e.g. rms,kurtosis (features mode) [default: rms,kurtosis,peak,crest].")
@click.option("--fft-bands", default=None,
              help="FFT band energies LOW-HIGH Hz, comma separated (features mode) [default: 5 octaves up to Nyquist].")
@click.option("--channels", default="", help="Channels to keep, by name or 0-based index, comma separated (of a CSV, "
              "only these columns are read: others may hold text).")
@click.option("--skip-rows", type=click.IntRange(min=0), default=0,
              help="Lines to skip at the top of a CSV file: a data logger's preamble above the header.")
@click.option("--sample-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Hz of a CSV / .npy / .npz recording that does not state it (a time column or a "
                   "'sample_rate' entry does).")
@click.option("--start", default=None, help="Ignore rows before this time (e.g. a run-in period).")
@click.option("--end", default=None, help="Ignore rows at or after this time (e.g. after shutdown).")
@click.option("--train-until", default=None,
              help="Train on rows before this time (2004-02-15T12:52:39 or 2004.02.15.12.52.39); default: all.")
@click.option("--epochs", type=click.IntRange(min=1), default=150, show_default=True, help="Most epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=15, show_default=True, help="Early-stopping patience.")
@click.option("--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Last fraction of training windows used for validation and the threshold.")
@click.option("--quantize", type=click.Choice(["auto", "int8", "16x8", "float32"]), default="auto", show_default=True,
              help="Variant the bundle serves (all are exported). auto: int8 if it agrees with Keras and resolves the "
                   "threshold, else 16x8, else float32; an explicit variant must pass the parity gate.")
@click.option("--threshold-method", type=click.Choice(["quantile", "max_margin", "mean_std", "pot"]),
              default="mean_std", show_default=True)
@click.option("--threshold-param", multiple=True, help="NAME=VALUE for the method (q, margin, k, risk, init_quantile).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-agreement", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
              help="Least fraction of held-out windows whose decision the served model must share with Keras.")
@click.option("--model-id", default=None, help="Model id (default: data name + architecture).")
@click.option("--group", default=None, help="The kind of machine the model is for (an id, as the gateways' [[sensors]] "
              "group): only sensors of that group take it (default: any sensor).")
@click.option("--persistence", type=click.IntRange(min=1), default=6, show_default=True,
              help="Consecutive windows above threshold that count as a persistent crossing in the report.")
@click.option("--select", multiple=True, help="A collected dataset's windows: KEY=VALUE (device, gateway, kind, "
              "model_version, start, end, healthy; default healthy=true), repeatable.")
def train(data: Path | str, endpoint: str | None, fmt: str, out: Path, architecture: str, units: str, mode: str | None, window: int | None,
          hop: int | None, block: int | None, features: str | None, fft_bands: str | None, channels: str,
          skip_rows: int, sample_rate: float | None, start: str | None, end: str | None, train_until: str | None,
          epochs: int, batch_size: int, learning_rate: float, patience: int,
          validation_fraction: float, quantize: str, threshold_method: str, threshold_param: tuple[str, ...],
          seed: int, min_agreement: float, model_id: str | None, group: str | None, persistence: int,
          select: tuple[str, ...]) -> None:
    """Train on --data and write a verified bundle to --out."""
    from trainer.export import ExportError
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    try:
        unit_list = tuple(int(u) for u in _csv(units))
    except ValueError as exc:
        raise click.BadParameter(f"--units {units!r} must be integers, e.g. 32,16") from exc
    chans = tuple(int(c) if c.lstrip("-").isdigit() else c for c in _csv(channels)) or None
    if skip_rows and fmt == "auto":  # a preamble would mislead the detection; only CSV tables skip rows
        fmt = "csv"
    try:
        recording = None
        remote = isinstance(data, str)  # s3://: only a collected dataset is read from a store
        if remote or select or data.is_dir():  # perhaps the fleet's collected windows (trainer.dataset), filtered
            from trainer import dataset

            loc = dataset.location(data, endpoint)
            if remote or select or dataset.is_dataset(loc):
                recording = dataset.load(loc, dataset.parse_select(select, start=start, end=end), chans)
        opts = TrainOptions(
            data=data, out=out, format=fmt, channels=chans, train_until=train_until, start=start, end=end,
            mode=mode, window=window, hop=hop, block=block,
            features=None if features is None else _csv(features), fft_bands=None if fft_bands is None else _bands(fft_bands),
            model=ModelConfig(architecture=architecture, units=unit_list),
            fit=FitConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                          validation_fraction=validation_fraction, patience=patience, seed=seed),
            quantize=quantize, threshold_method=threshold_method, threshold_params=_params(threshold_param),
            min_agreement=min_agreement, model_id=model_id, group=group, persistence=persistence, recording=recording,
            load_options={k: v for k, v in (("sample_rate", sample_rate), ("skip_rows", skip_rows)) if v},
        )
        result = run(opts)
    except (ExportError, ValueError, KeyError, TypeError, BundleError, DataFormatError) as exc:
        log.error("training failed, %s left unchanged: %s", out, exc)
        raise SystemExit(1) from exc
    summary = result.report["summary"]
    click.echo(f"bundle: {result.bundle}")
    click.echo(f"representation: {result.manifest['recipe']['mode']}, window {result.manifest['window']['steps']}, "
               f"hop {result.manifest['window']['hop']}, {result.manifest['model']['architecture']}"
               f" ({result.manifest['recipe']['rule']})")
    click.echo(f"quantization: {result.manifest['quantization']['reason']}")
    click.echo(f"serves: {result.manifest['tflite']['quantization']}  threshold: {summary['threshold']:.5g}  "
               f"training windows above threshold: {summary['training_windows_above_threshold']}/"
               f"{summary['training_windows']}")
    crossing = summary["first_persistent_crossing"]
    click.echo("first persistent crossing: " + ("none" if crossing is None else
                                                 str(crossing["time"] or f"row {crossing['row_end']}")))


def describe(manifest: dict) -> str:
    """Human-readable summary of a manifest."""
    m, d, pre, th, tfl = (manifest["model"], manifest["data"], manifest["preprocess"], manifest["threshold"],
                          manifest["tflite"])
    lines = [
        f"model      {m['id']}  version {m['version']}  ({m['architecture']}, created {m['created']})",
        f"data       {d.get('source', '?')}  format {d.get('format', '?')}  rows {d.get('rows', '?')}  "
        f"digest {d['digest'][:16]}…",
        f"signal     channels {manifest['signal']['channels']}  units {manifest['signal']['units']!r}  "
        f"sample rate {manifest['signal'].get('sample_rate')}",
        f"preprocess mode {pre['mode']}  window {pre['window']}  hop {pre.get('hop')}  block {pre.get('block')}  "
        f"features {pre.get('feature_names')}",
        f"threshold  {th['value']:.6g} ({th['method']}, {json.dumps(th['params'])})",
        f"served     {tfl['file']}  {tfl['quantization']}  stateful {tfl['stateful']}  "
        f"input {tfl['input']['dtype']}{tfl['input']['shape']}  sha256 {tfl['sha256'][:16]}… OK",
    ]
    for name, v in manifest.get("variants", {}).items():
        p, lat = v.get("parity", {}), v.get("latency", {})
        lines.append(
            f"variant    {name:8s} {v.get('size_bytes', 0) / 1024:8.1f} KB  p50 {lat.get('p50_us', float('nan')):7.1f} µs"
            f"  p99 {lat.get('p99_us', float('nan')):7.1f} µs  max rel err {p.get('max_rel_error', float('nan')):.2e}"
            f"  spearman {p.get('spearman', float('nan')):.4f}  agreement {p.get('agreement', float('nan')):.4f}"
        )
    recipe = manifest.get("recipe")
    if recipe:
        lines.append(f"recipe     {recipe.get('rule')}: {'; '.join(recipe.get('reasons', []))}"
                     + (f" (given: {', '.join(recipe['overridden'])})" if recipe.get("overridden") else ""))
    choice = manifest.get("quantization")
    if choice:
        lines.append(f"quantize   {choice.get('requested', '?')} -> {choice.get('served')}: {choice.get('reason')}")
    summary = manifest.get("report", {}).get("summary")
    if summary:
        crossing = summary.get("first_persistent_crossing")
        lines.append(f"report     training windows above threshold {summary['training_windows_above_threshold']}/"
                     f"{summary['training_windows']}; first persistent crossing "
                     f"{'none' if crossing is None else crossing.get('time') or crossing.get('row_end')}")
    return "\n".join(lines)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def inspect(bundle: Path, as_json: bool) -> None:
    """Validate BUNDLE (schema, sha256, tensors) and print its manifest. Exit 1 if it is corrupt."""
    from edge_agent.contract.bundle import Bundle

    try:
        loaded = Bundle.load(bundle)
    except BundleError as exc:
        click.echo(f"{bundle}: INVALID: {exc}", err=True)
        raise SystemExit(1) from exc
    click.echo(json.dumps(loaded.manifest, indent=2) if as_json else describe(loaded.manifest))


@cli.command(epilog="Exit status: 0 when every recording was evaluated (with --answers: when the report was "
             "written); 1 when one failed, or on bad input; 2: a usage error.")
@click.option("--data", "data_dir", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled recordings: the folder the suite's paths are relative to (or that is searched without a "
              "suite).")
@click.option("--suite", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --data: suite TOML ([[case]] tables); default: discover NAB-layout series and tables with "
              "label columns.")
@click.option("--answers", "answers", default=None, type=DatasetArg(file_okay=False),
              help="Instead of --data: score --bundle against the technicians' answers (confirmed fault, false "
              "alarm) in this collected dataset (trainer collect --out): a folder or s3://bucket/prefix.")
@click.option("--bundle", "bundles", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --answers: a bundle to score (repeatable: one column each).")
@endpoint_option()
@click.option("--select", multiple=True, help="With --answers: which windows: device=, gateway=, group=, "
              "model_version=, start=, end= (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="With --data: report.md, results.json and one PNG per recording [default: runs/evaluate]; with "
              "--answers: answers.md, answers.json, answers.png [default: runs/evaluate-answers].")
@click.option("--only", default=None, help="With --data: evaluate only the cases whose name matches this glob.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="With --data: most training epochs (default: trainer's).")
@click.option("--no-baselines", is_flag=True, help="With --data: skip the RMS, kurtosis and tutorial baselines.")
def evaluate(data_dir: Path | None, suite: Path | None, answers: Path | str | None, bundles: tuple[Path, ...],
             endpoint: str | None, select: tuple[str, ...], out: Path | None, only: str | None, epochs: int | None,
             no_baselines: bool) -> None:
    """Score detection: labelled recordings trained with default options and replayed through the gateway's
    pipeline (--data), or existing bundles against the alerts technicians answered in the fleet (--answers).

    \b
    trainer evaluate --data DIR [--suite SUITE.toml] [--out runs/evaluate]
    trainer evaluate --answers DATASET --bundle A [--bundle B ...] [--select group=pumps] [--out DIR]
    \f
    Two modes of one command rather than subcommands: ``trainer evaluate --data ...`` (``make evaluate``, the
    README, docs/central/evaluate.md) keeps working unchanged, whereas a click group would need a subcommand name
    before its options (or parse the group's own options before it, which --help cannot show clearly). Each mode
    refuses the other's options, so a mix is a usage error rather than an option silently ignored.
    """
    given = [o for o, on in (("--data", data_dir), ("--answers", answers)) if on is not None]
    if len(given) != 1:
        raise click.UsageError("give --data DIR (labelled recordings) or --answers DATASET --bundle B (the "
                               "technicians' answers)" + (", not both" if given else ""))
    if answers is not None:
        stray = [name for name, on in (("--suite", suite), ("--only", only), ("--epochs", epochs),
                                       ("--no-baselines", no_baselines)) if on]
        if stray:
            raise click.UsageError(f"{', '.join(stray)}: only with --data")
        if not bundles:
            raise click.UsageError("--answers needs one or more --bundle to score")
        _evaluate_answers(answers, endpoint, bundles, select, out or Path("runs/evaluate-answers"))
        return
    stray = [name for name, on in (("--bundle", bundles), ("--endpoint", endpoint), ("--select", select)) if on]
    if stray:
        raise click.UsageError(f"{', '.join(stray)}: only with --answers")
    import fnmatch

    from trainer.evaluate.harness import discover, load_suite, run_suite
    from trainer.train import FitConfig

    out = out or Path("runs/evaluate")
    cases = load_suite(suite, data_dir) if suite else discover(data_dir)
    if only:
        cases = [c for c in cases if fnmatch.fnmatch(c.name, only)]
    if not cases:
        raise click.ClickException(f"no cases to evaluate in {suite or data_dir}")
    click.echo(f"evaluating {len(cases)} recording(s) into {out}")
    train_options = {"fit": FitConfig(epochs=epochs)} if epochs else {}
    outcomes = run_suite(cases, out, train_options=train_options, with_baselines=not no_baselines)
    click.echo((out / "report.md").read_text(encoding="utf-8"))
    failed = [o.case.name for o in outcomes if not o.rows]
    if failed:
        click.echo(f"{len(failed)} case(s) failed: {', '.join(failed)}", err=True)
        raise SystemExit(1)


def _evaluate_answers(where: Path | str, endpoint: str | None, bundles: tuple[Path, ...], select: tuple[str, ...],
                      out: Path) -> None:
    """``trainer evaluate --answers``: the table on stdout, the files in ``out``."""
    from trainer import dataset
    from trainer.evaluate.answers import AnswersOptions, evaluate_answers, table

    try:
        flt = dataset.parse_select(select)
        result = evaluate_answers(AnswersOptions(dataset=dataset.location(where, endpoint), bundles=bundles, out=out,
                                                 select=flt))
    except (ValueError, BundleError, DataFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(table(result.results))
    click.echo(f"written: {result.report}, {result.json}, {result.plot}")


@cli.group("dataset")
def dataset_group() -> None:
    """Questions about a collected dataset (trainer collect --out), local or on S3."""


@dataset_group.command("summary")
@click.argument("dataset_path", metavar="DATASET", type=DatasetArg(file_okay=False))
@endpoint_option()
@click.option("--device", "devices", multiple=True, help="Only this device (repeatable).")
@click.option("--start", default=None, help="Only windows whose last sample is at or after this time (UTC).")
@click.option("--end", default=None, help="Only windows whose last sample is before this time (UTC).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device and day, then the totals.")
def dataset_summary(dataset_path: Path | str, endpoint: str | None, devices: tuple[str, ...], start: str | None,
                    end: str | None, as_json: bool) -> None:
    """Per device and day: windows by kind, alerts, technicians' answers, drift notices, files and bytes."""
    from edge_agent.contract.upload_record import KINDS
    from trainer import dataset

    try:
        result = dataset.summarize(dataset.location(dataset_path, endpoint), devices, start, end)
    except (ValueError, DataFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = [r.as_dict() for r in result.rows]
    totals = {"devices": len({r["device"] for r in rows}), "days": len({r["date"] for r in rows}),
              "windows": result.windows, "alerts": sum(r["alerts"] for r in rows), "files": result.files,
              "unreadable_files": result.unreadable, "bytes": sum(r["bytes"] for r in rows),
              "seconds": round(result.seconds, 3)}
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        click.echo(json.dumps({"totals": totals}))
        return
    kinds = list(KINDS)
    header = ["device", "date", "windows", *kinds, "alerts", *(["answers"] if result.has_answers else []), "files",
              "MB"]
    lines = [header]
    for r in rows:
        lines.append([r["device"], r["date"], str(r["windows"]), *(str(r["kinds"][k]) for k in kinds),
                      str(r["alerts"]),
                      *([", ".join(f"{a} {n}" for a, n in sorted(r["answers"].items())) or "-"]
                        if result.has_answers else []),
                      str(r["files"]), f"{r['bytes'] / 1e6:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                                  strict=True))))
    click.echo(f"{totals['devices']} devices, {totals['days']} days, {totals['windows']} windows, {totals['alerts']} "
               f"alerts, {totals['files']} files ({totals['bytes'] / 1e6:.1f} MB"
               + (f", {result.unreadable} unreadable, skipped" if result.unreadable else "")
               + f") in {result.seconds:.2f} s")


@dataset_group.command("compact")
@click.argument("dataset_path", metavar="DATASET", type=DatasetArg(file_okay=False))
@endpoint_option()
@click.option("--device", "devices", multiple=True, help="Only this device (repeatable).")
@click.option("--before", default=None, metavar="YYYY-MM-DD",
              help="Only days before this one [default: today, UTC: today's files are still being written].")
def dataset_compact(dataset_path: Path | str, endpoint: str | None, devices: tuple[str, ...],
                    before: str | None) -> None:
    """Merge each device's files of a day into one (copies of a window kept once), then delete the merged files:
    reading costs per file, and collectors write one file per device, day and flush. Safe while collectors write;
    on S3 the keys must be allowed to delete (s3:DeleteObject)."""
    import re

    from trainer import dataset

    if before is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", before):
        raise click.BadParameter(f"{before!r} is not a date YYYY-MM-DD", param_hint="--before")
    try:
        stats = dataset.compact(dataset.location(dataset_path, endpoint), devices, before)
    except (ValueError, DataFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{stats.partitions} device-days compacted: {stats.files_before} files -> {stats.files_after}, "
               f"{stats.windows} windows ({stats.copies} copies dropped)"
               + (f"; {stats.unreadable} unreadable files left as they are" if stats.unreadable else "")
               + f" in {stats.seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="trainer")


if __name__ == "__main__":
    main()
