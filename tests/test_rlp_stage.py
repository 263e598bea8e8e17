"""The rlp stage's bad options: each fails before anything trains, with one line."""

import pytest
import yaml

from icegrt_trl.cli import main


@pytest.mark.parametrize("options, message", [
    ({"methods": ["uml", "dpo"]}, r"methods=\['uml', 'dpo'\] must name one or more of \['uml', 'spg'\]"),
    ({"num_samples": 1}, "RLP compares samples of the same instruction, so it needs at least 2"),
    ({"gamma": 1.5}, r"gamma=1.5 must lie in \[0, 1\]"),
    ({"judge": "llm"}, "judge='llm' must be 'exact', 'embedding' or 'nli'"),
    ({"uml_lam": -1}, "uml_lam=-1 must be >= 0"),
])
def test_bad_rlp_options(tmp_path, capsys, options, message):
    import re

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stages": {"sft": {"model_name_or_path": "testbed:llama"}, "rlp": options}}))
    assert main(["pipeline", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "out" / "sft").exists()  # nothing trained
