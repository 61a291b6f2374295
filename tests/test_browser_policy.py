"""Without chromium, browser checks skip with the reason outside CI and fail under CI=true."""

from __future__ import annotations

import pytest
from browser import chromium


def test_missing_chromium_skips_outside_ci_and_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no chromium on the PATH
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed.*outside CI"):
        chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required because CI=true"):
        chromium()


def test_installed_chromium_is_found(tmp_path, monkeypatch):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert chromium() == str(fake)


def test_page_text_reads_the_fields_of_a_details_pane():
    from browser import page_text, section

    dom = (
        "<html><head><style>.a{color:red}</style><script>var x = '<b>no</b>';</script></head>"
        "<body><nav><a>Runs</a><a>Model registry</a></nav><dl><dt>Logged from</dt>"
        "<dd><span>mimray sweep k.yaml</span> <span>0a1b2c3</span></dd><dt>Datasets used</dt>"
        "<dd>shapes-train (#d41d8c)</dd><dt>Model versions</dt><dd>None</dd></dl></body></html>"
    )
    text = page_text(dom)
    assert text.startswith("Runs | Model registry | Logged from") and "var x" not in text
    assert section(text, "Logged from", "Datasets used") == "mimray sweep k.yaml | 0a1b2c3"
    assert section(text, "Datasets used", "Model versions") == "shapes-train (#d41d8c)"
    assert section(text, "Datasets used", "Nowhere") == ""
