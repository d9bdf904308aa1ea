"""The demo's summary: the numbers it states, its verdict, and its plot (no model needed)."""

from __future__ import annotations

import pytest

from rwku.experiments.demo import headline, plot, summarize


def _scores(forget: dict, neighbor: dict) -> dict:
    return {"scores": {"forget": {"likelihood": forget}, "neighbor": {"likelihood": neighbor}}}


def _record(f_after: float, n_after: float) -> dict:
    return {
        "before": _scores({"fb": 1.0, "qa": 6.0, "aa": 7.0, "all": 6.0}, {"fb": 4.0, "qa": 3.0, "all": 3.5}),
        "after": _scores(
            {"fb": 0.5, "qa": 3.0, "aa": 4.0, "all": f_after}, {"fb": 3.9, "qa": 2.9, "all": n_after}
        ),
    }


def test_summary_states_relative_drops_and_a_selective_verdict():
    s = summarize(_record(f_after=3.0, n_after=3.15))
    assert s["forget_drop"] == pytest.approx(0.5) and s["neighbor_drop"] == pytest.approx(0.1)
    assert s["selective"] and s["forget"]["qa"] == {"before": 6.0, "after": 3.0}
    text = headline(s)
    assert "forget likelihood fell from 6.00 to 3.00 (−50%)" in text
    assert "neighbor likelihood from 3.50 to 3.15 (−10%)" in text
    assert "neighbor drop is 20% of the forget drop" in text


@pytest.mark.parametrize(
    ("f_after", "n_after"),
    [(4.5, 3.5), (3.0, 2.8)],  # forget fell only 25 %; neighbor fell 20 % = 40 % of forget's 50 %
)
def test_weak_or_unselective_effects_are_called_so(f_after, n_after):
    s = summarize(_record(f_after, n_after))
    assert not s["selective"] and "below the demo's bar" in headline(s)


def test_a_rise_is_shown_as_a_rise():
    s = summarize(_record(f_after=3.0, n_after=3.85))
    assert "(+10%)" in headline(s) and s["selective"]


def test_plot_writes_a_png(tmp_path):
    path = plot(summarize(_record(3.0, 3.15)), tmp_path / "demo" / "likelihood.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
