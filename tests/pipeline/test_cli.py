"""The `nodd` command: lazy imports, one-line errors, exit codes."""

import subprocess
import sys

import pytest


def nodd(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, **kwargs)


def test_help_does_not_import_torch_or_ray():
    code = ("import sys\nfrom pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().endswith("[]"), result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["prep", "source.kind=bogus"], "source.kind='bogus' is not valid; choose one of"),
        (["prep", "--config", "nope.toml"], "nope.toml does not exist"),
        (["prep", "tokenizer.path=x", "shard_size=0"], "shard_size=0 must be >= 1"),
        (["shards", "verify", "/nonexistent/dir"], "manifest.json not found"),
        (["tokenizer", "train", "kind=lfq"], "choose one of: kl, vq, fsq, bpe"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(args, fragment):
    result = nodd(*args)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("nodd: error:") and fragment in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_tokenizer_says_how_to_make_one(tmp_path):
    result = nodd("prep", f"out_dir={tmp_path / 'o'}", f"tokenizer.path={tmp_path / 'none'}", "source.limit=5")
    assert result.returncode == 1 and "nodd tokenizer train" in result.stderr, result.stderr
