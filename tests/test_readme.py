"""The README's Python blocks are executable documentation: they run in order, as one session, in a fresh process.

An HTML comment right above a block, `<!-- readme-test: "text" => "other" | "text" => {placeholder} -->`, names what
the test changes in that block (the tiny preset instead of the paper one, fewer steps, the repository's fixtures
instead of a user's files). Placeholders: `{image}` a bundled NIH PNG, `{dicom}` a DX DICOM made from it, `{series}`
the Lung-PET-CT-Dx fixture series. The process runs offline (`HF_HUB_OFFLINE=1`) with a temporary Hugging Face
cache, in a temporary working folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, NIH_DIR
from test_image_processing import write_dicom

from hf_cxr.imaging import load_radiograph

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<directive>.*?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)
REPLACEMENT = re.compile(r'"(?P<old>[^"]+)" => (?:"(?P<new>[^"]*)"|\{(?P<placeholder>\w+)\})')


def readme_blocks(placeholders: dict[str, str]) -> list[str]:
    """Every Python block of the README with its directive's replacements made (each must match its block)."""
    blocks = []
    for match in BLOCK.finditer(README.read_text(encoding="utf-8")):
        code = match["code"]
        for part in (match["directive"] or "").split("|"):
            if not part.strip():
                continue
            replacement = REPLACEMENT.fullmatch(part.strip())
            assert replacement, f"unreadable readme-test directive: {part!r}"
            assert replacement["old"] in code, f"readme-test replaces {replacement['old']!r}, absent from its block"
            new = replacement["new"] if replacement["placeholder"] is None else placeholders[replacement["placeholder"]]
            code = code.replace(replacement["old"], new)
        blocks.append(code)
    return blocks


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path: Path) -> None:
    image = sorted((NIH_DIR / "images").glob("*.png"))[0]
    grey = load_radiograph(image)
    dicom = write_dicom(tmp_path / "study.dcm", np.round(grey * 4095), WindowCenter=2048, WindowWidth=4096)
    series = next(path.parent for path in (FIXTURES / "lung_pet_ct_dx").rglob("*.dcm"))
    placeholders = {"image": str(image), "dicom": str(dicom), "series": str(series)}
    blocks = readme_blocks(placeholders)
    assert len(blocks) >= 8, "the README's Python blocks were not found"
    script = "\n".join(f"{code}\nprint('readme block {index} ran', flush=True)\n" for index, code in enumerate(blocks))
    (tmp_path / "readme_blocks.py").write_text(script, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "readme_blocks.py")], cwd=work, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert f"readme block {len(blocks) - 1} ran" in result.stdout
