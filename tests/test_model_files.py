"""Bad model files get one clear error; untrusted pickles are never executed."""

import pytest
import torch
from genorigin.export.adapters import load_generator_file
from genorigin.export.architectures import DCGANConfig, DCGANGenerator

from genorigin.cli import main


class Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_garbage_and_pickles_are_refused(tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match="not a loadable genorigin model file"):
        load_generator_file(tmp_path / "garbage.pt")
    torch.save({"format": "genorigin-bundled-v1", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a loadable genorigin model file"):
        load_generator_file(tmp_path / "evil.pt")
    assert "pickle code ran" not in capsys.readouterr().out
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a genorigin model file"):
        load_generator_file(tmp_path / "other.pt")


def test_mismatched_state_dict_and_unknown_kind(tmp_path):
    wrong = DCGANGenerator(DCGANConfig(width=16)).state_dict()
    torch.save({"format": "genorigin-bundled-v1", "kind": "dcgan", "config": DCGANConfig().to_dict(),
                "state_dict": wrong}, tmp_path / "wrong.pt")  # fmt: skip
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_generator_file(tmp_path / "wrong.pt")
    torch.save({"format": "genorigin-bundled-v1", "kind": "flow", "state_dict": {}}, tmp_path / "flow.pt")
    with pytest.raises(ValueError, match="unknown model kind"):
        load_generator_file(tmp_path / "flow.pt")


def test_cli_reports_bad_model_in_one_line(tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"nope")
    assert main(["calibrate", "--model", str(tmp_path / "garbage.pt"), "--samples", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "garbage.pt" in err and len(err.splitlines()) == 1
    assert main(["calibrate", "--model", "no_such_model", "--samples", "4"]) == 2
    assert "no_such_model does not exist (and is not a bundled model" in capsys.readouterr().err


def test_unknown_config_key_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"format": "genorigin-bundled-v1", "kind": "dcgan", "config": {**DCGANConfig().to_dict(), "depth": 7},
                "state_dict": DCGANGenerator().state_dict()}, path)  # fmt: skip
    with pytest.raises(ValueError) as info:
        load_generator_file(path)
    message = str(info.value)
    assert type(info.value) is ValueError and str(path) in message and "'depth'" in message
    assert "unknown config key" in message and len(message.splitlines()) == 1
