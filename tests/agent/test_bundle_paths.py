"""A bundle path that is wrong the ways a technician gets it wrong: a folder that does not exist, the manifest
file instead of its folder, a folder without a manifest. Each says what is wrong
with which path and what to give instead."""

from __future__ import annotations

import json

import pytest

from edge_agent.contract.bundle import MANIFEST_FILE, Bundle
from edge_agent.contract.errors import BundleError


def test_a_bundle_folder_that_does_not_exist_says_so_and_what_to_give(tmp_path):
    missing = tmp_path / "bundles" / "pump-7"
    with pytest.raises(BundleError) as err:
        Bundle.load(missing)
    text = str(err.value)
    assert text.startswith(f"{missing} does not exist: ")
    assert MANIFEST_FILE in text and "edge-agent deploy" in text and "not a bundle directory" not in text


def test_the_manifest_file_instead_of_its_folder_is_named_a_file(tmp_path):
    manifest = tmp_path / MANIFEST_FILE
    manifest.write_text("{}")
    with pytest.raises(BundleError, match=f"{manifest} is a file, not a bundle: give the folder that holds"):
        Bundle.load(manifest)


def test_a_folder_without_a_manifest_is_not_a_complete_bundle(tmp_path):
    with pytest.raises(BundleError, match=f"{tmp_path}: no {MANIFEST_FILE}, so not a complete bundle"):
        Bundle.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(BundleError, match="model"):  # a manifest without its keys: the first missing one is named
        Bundle.load(tmp_path)
