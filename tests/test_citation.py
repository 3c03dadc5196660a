"""CITATION.cff is valid CFF 1.2.0 (the format's own JSON Schema, tests/data) and cites the two
papers whose methods the package implements by their real titles, and the package itself."""

import datetime
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).resolve().parent / "data" / "cff-1.2.0.schema.json"


def _strings_for_dates(value):
    """The schema's note: YAML dates must be cast to strings before validating."""
    if isinstance(value, dict):
        return {k: _strings_for_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings_for_dates(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


@pytest.fixture(scope="module")
def cff():
    return _strings_for_dates(yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["$id"] == "https://citation-file-format.github.io/1.2.0/schema.json"
    cls = jsonschema.validators.validator_for(schema)  # draft-07
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_citation_cff_is_valid_cff_1_2_0(cff, validator):
    errors = sorted(validator.iter_errors(cff), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    assert cff["cff-version"] == "1.2.0"


def test_the_validator_rejects_broken_files(cff, validator):
    """Not a vacuous check: the schema catches a missing required key, a malformed DOI, a month
    out of range and a misspelt key."""
    broken = [
        {k: v for k, v in cff.items() if k != "authors"},
        {**cff, "references": [{**cff["references"][0], "doi": "arXiv:2605.27765"}]},
        {**cff, "references": [{**cff["references"][1], "month": 13}]},
        {**cff, "licence": "Apache-2.0"},
    ]
    for doc in broken:
        assert not validator.is_valid(doc)


def test_it_cites_the_software_and_both_papers(cff):
    assert cff["type"] == "software" and cff["title"].startswith("lit_scsdpo")
    assert cff["license"] == "Apache-2.0"
    refs = {r["title"]: r for r in cff["references"]}
    sc = refs["Restoring the Sweet Spot: Pass-Rate Weighted Self-Distillation for LLM Reasoning"]
    sdpo = refs["Reinforcement Learning via Self-Distillation"]
    assert sc["url"] == "https://arxiv.org/abs/2605.27765" and sc["doi"] == "10.48550/arXiv.2605.27765"
    assert sdpo["url"] == "https://arxiv.org/abs/2601.20802" and sdpo["doi"] == "10.48550/arXiv.2601.20802"
    assert sdpo["authors"][0]["family-names"] == "Hübotter" and len(sdpo["authors"]) == 11
    assert sdpo["repository-code"] == "https://github.com/lasgroup/SDPO"
    assert sc["authors"][0] == {"given-names": "Zehao", "family-names": "Liu"} and len(sc["authors"]) == 4
    assert sc["year"] == sdpo["year"] == 2026
