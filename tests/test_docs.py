"""The documentation: the site builds strictly (broken links, missing pages, pages out of the nav fail) with
the reference generated from the code, and the README's front page says what is true."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import click
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Markdown links and images: ``[text](target)`` / ``![alt](target)``, the target up to a space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_docs_build_strict_with_the_generated_reference(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").is_file()
    config_page = (site / "reference" / "config.html").read_text(encoding="utf-8")
    missing = [key for key in _config_keys() if f"<code>{key}</code>" not in config_page]
    assert not missing, f"config keys missing from the generated reference: {missing}"
    assert "<code>vib/&lt;device&gt;/samples</code>" in (site / "reference" / "topics.html").read_text(encoding="utf-8")


def _config_keys() -> list[str]:
    """Every leaf key of the config tree, as the reference page writes it (``mqtt.tls.ca_file``)."""
    from edge_agent import config

    def walk(cls: type, prefix: str) -> typing.Iterator[str]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            union = typing.get_origin(tp) in (typing.Union, types.UnionType)
            inner = next(a for a in typing.get_args(tp) if a is not type(None)) if union else tp
            if f.metadata.get("internal") or inner is Path:
                continue
            if typing.get_origin(inner) is tuple and typing.get_args(inner) and \
                    dataclasses.is_dataclass(typing.get_args(inner)[0]):
                yield from walk(typing.get_args(inner)[0], "")
            elif dataclasses.is_dataclass(inner):
                yield from walk(inner, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    return list(walk(config.AgentConfig, ""))


def test_readme_is_a_front_page_whose_commands_and_links_are_true():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    assert quick, "README.md has no '## Quick start' section"
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", quick.group(1), re.S)
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    assert {"demo", "test", "docs"} <= targets
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert "make test" in ci, ".ci/run must run the README's test command"
    nav_pages = set(_nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]))
    broken, off_site = [], []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if not (ROOT / path).exists():  # a page generated at build time does not exist on GitHub
            broken.append(target)
        elif path.startswith("docs/") and path.endswith(".md") and path.removeprefix("docs/") not in nav_pages:
            off_site.append(target)
    assert not broken, f"README.md links to what does not exist in the repository: {broken}"
    assert not off_site, f"README.md links to docs pages outside the site's nav: {off_site}"
    assert len(text.splitlines()) <= 150, "the README is a front page: the rest belongs in docs/"


def test_the_install_guide_puts_the_bundle_in_with_edge_agent_deploy():
    """The install steps once copied the bundle with ``cp -r`` while the next section forbade it."""
    guide = (ROOT / "docs" / "technician" / "install.md").read_text(encoding="utf-8")
    blocks = "\n".join(re.findall(r"```(?:sh|bash)\n(.*?)```", guide, re.S))
    assert re.search(r"edge-agent deploy \S+ --config /etc/edge-agent/agent.toml --sensor pump-1", blocks)
    assert not re.search(r"^\s*(sudo\s+)?cp\b", blocks, re.M), "bundles go in with edge-agent deploy, never cp"


#: A documented command line: the program (after ``sudo -u USER`` or a path), its subcommand, the rest.
COMMAND = re.compile(r"(?:^|\s|/)(edge-agent|trainer|firmware-sim)((?:\s+-[-\w]+(?:\s+(?:json|text))?)*)\s+([a-z][\w-]*)(.*)")


def test_documented_command_lines_use_real_subcommands_and_options():
    from edge_agent.cli import main as edge_agent_cli
    from firmware_sim.cli import main as firmware_sim_cli
    from trainer.cli import cli as trainer_cli

    programs = {"edge-agent": edge_agent_cli, "trainer": trainer_cli, "firmware-sim": firmware_sim_cli}

    def options(command) -> set[str]:
        return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}

    wrong, seen = [], 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for lang, block in re.findall(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.S | re.M):  # every block, in pairs
            if lang not in ("", "sh", "bash", "console"):  # shell and unlabelled blocks only
                continue
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\s*(sudo\s+(-u\s+\S+\s+)?)?", "", line.split(" #")[0])
                for m in COMMAND.finditer(line):
                    prog, global_opts, sub, rest = m.groups()
                    group = programs[prog]
                    where = f"{page.relative_to(ROOT)}: {line.strip()}"
                    command = group.get_command(click.Context(group), sub)  # trainer loads some commands lazily
                    if command is None:
                        wrong.append(f"{where}: no subcommand {sub!r}")
                        continue
                    seen += 1
                    known = options(command) | options(group)
                    given = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", global_opts + " " + rest.split("|")[0])
                    wrong += [f"{where}: {prog} {sub} has no option {o}" for o in given if o not in known]
    assert seen > 50, f"only {seen} command lines found in the docs' shell blocks"
    assert not wrong, "\n".join(wrong)


def _nav_pages(nav) -> typing.Iterator[str]:
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value
