"""The JSON report validates against the schema file shipped in docs/, for every kind of input."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURE_BUNDLES, REALWORLD_BUNDLES, ROOT, realworld

from ckptdoctor import check, inspect
from ckptdoctor.report.json import to_dict

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


@pytest.mark.parametrize("name", sorted(FIXTURE_BUNDLES))
def test_fixture_reports_validate(name):
    for report in (inspect(FIXTURE_BUNDLES[name]), check(FIXTURE_BUNDLES[name], FIXTURE_BUNDLES["pretrained"])):
        jsonschema.validate(to_dict(report), SCHEMA)


@pytest.mark.parametrize("name", sorted(REALWORLD_BUNDLES))
def test_realworld_reports_validate(name):
    jsonschema.validate(to_dict(check(realworld(REALWORLD_BUNDLES[name]))), SCHEMA)


def test_schema_rejects_a_renamed_field():
    document = to_dict(check(FIXTURE_BUNDLES["finetune_trainable"]))
    document["findings"][0]["slug"] = document["findings"][0].pop("name")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)
