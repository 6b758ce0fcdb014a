"""Prediction files: aliases, optional fields and clear errors."""
import json

import pytest

from explainrec.data.schema import DataError
from explainrec.metrics import load_predictions


def _write(tmp_path, lines, name="preds.jsonl"):
    p = tmp_path / name
    p.write_text("".join(l + "\n" for l in lines))
    return p


def test_load_aliases_and_optional_fields(tmp_path):
    p = _write(tmp_path, [
        json.dumps({"pred": "a", "ref": "b", "user": 3, "item": "i9", "features": "screen", "bucket": "ds1", "cluster": 2}),
        "",
        json.dumps({"generated": "c", "explanation": "d", "features": ["x", "y"], "method": "gavamoe", "extra": 1}),
        json.dumps({"prediction": "", "gold": "e"}),
    ])
    rows = load_predictions(p)
    assert [(r["prediction"], r["reference"]) for r in rows] == [("a", "b"), ("c", "d"), ("", "e")]
    assert rows[0]["features"] == ["screen"] and rows[0]["bucket"] == "ds1" and rows[0]["user"] == 3
    assert rows[1]["features"] == ["x", "y"] and rows[1]["extra"] == 1
    assert "pred" not in rows[0] and "explanation" not in rows[1]


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"prediction": "a", "reference": ', "broken JSON"),
        ('{"reference": "b"}', "field 'prediction'"),
        ('{"prediction": "a"}', "field 'reference'"),
        ('{"prediction": 3, "reference": "b"}', "field 'prediction'"),
        ('{"pred": "a", "reference": null}', "field 'reference'"),
        ('{"prediction": "a", "reference": "  "}', "reference is empty"),
        ('{"prediction": "a", "reference": "b", "features": 5}', "field 'features'"),
        ('{"prediction": "a", "reference": "b", "features": ["x", 1]}', "field 'features'"),
        ('{"prediction": "a", "reference": "b", "bucket": 1}', "field 'bucket'"),
        ('["a", "b"]', "expected a JSON object"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, line, needle):
    p = _write(tmp_path, ['{"prediction": "ok", "reference": "ok"}', line])
    with pytest.raises(DataError) as e:
        load_predictions(p)
    assert f"{p}:2" in str(e.value)
    assert needle in str(e.value)


def test_empty_file_is_an_error(tmp_path):
    p = _write(tmp_path, ["", "  "])
    with pytest.raises(DataError, match="empty prediction file"):
        load_predictions(p)
