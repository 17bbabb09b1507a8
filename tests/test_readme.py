"""The README's promises: its Python example runs and learns; its commands exist."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_trains(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["result"]["best_test_acc"] > 0.6  # 10 classes: chance is 0.1
    assert (tmp_path / "runs/mine/checkpoints/best.pt").is_file()


def test_readme_opens_with_demo_and_test_commands():
    head = README.read_text().split("```")[1]
    assert "make demo" in head and "make test" in head
    ci = (README.parent / ".ci/run").read_text()
    assert "make test" in ci
