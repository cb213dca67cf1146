"""No flag is silently overridden by a repeat: options meant to repeat append (``--model`` of ``attribute`` and
``serve``, ``--calibration NAME=PATH``), every other option given twice is refused in one line (exit 2)."""

from __future__ import annotations

import pytest

from genorigin.cli import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--model", "dcgan_a", "--model", "dcgan_b"],
        ["attribute", "x.png", "--model", "dcgan_a", "--steps", "10", "--steps", "20"],
        ["attribute", "x.png", "--model", "dcgan_a", "--max-steps", "10", "--steps", "10"],
        ["attribute", "x.png", "--model", "dcgan_a", "--rule", "grubbs", "--rule", "quantile"],
        ["serve", "--model", "dcgan_a", "--port", "1", "--port", "2"],
        ["export", "--model", "dcgan_a", "--out", "a", "--out", "b"],
        ["robustness", "--model", "dcgan_a", "--modes", "plain", "--modes", "robust"],
    ],
)
def test_a_single_valued_option_given_twice_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "given twice: it takes one value" in capsys.readouterr().err


def test_repeatable_options_keep_every_value_and_a_repeated_flag_is_harmless():
    args = build_parser(["attribute"]).parse_args(["attribute", "x.png", "--model", "a", "--model", "b=b.pt",
                                                   "--calibration", "a=a.json", "--quiet", "--quiet"])  # fmt: skip
    assert args.model == ["a", "b=b.pt"] and args.calibration == ["a=a.json"] and args.quiet
    assert not hasattr(args, "_genorigin_given_options")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "dcgan_a"], "two models named dcgan_a"),
        (["--model", "dcgan_b", "--calibration", "c.json"], "with several models write NAME=PATH"),
        (
            ["--model", "dcgan_b", "--calibration", "dcgan_a=a.json", "--calibration", "dcgan_a=b.json"],
            "--calibration given twice for model 'dcgan_a'",
        ),
        (["--model", "dcgan_b", "--figure", "f.png"], "are for one --model"),
        (["--model", "dcgan_b", "--engine", "ray", "--output", "o.jsonl"], "--engine ray attributes with one"),
    ],
)
def test_several_models_refuse_what_has_no_single_meaning(extra, message, capsys):
    assert main(["attribute", "x.png", "--model", "dcgan_a", *extra]) == 2
    assert message in capsys.readouterr().err
