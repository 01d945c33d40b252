"""The README's model example runs as written (keeps the documentation true)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_model_example_runs():
    section = README.read_text(encoding="utf-8").split("## The model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert set(scope["out"].losses) == {"text", "understanding", "image"}
    assert scope["images"].shape == (1, 4, 8, 8)
