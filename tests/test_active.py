"""Active clicks (lidarlift.pseudolabels.active) on a hand-built scene, and the next-clicks file's round
trip: written by the chooser's side, answered by the simulated annotator, read back as a clicks file."""
from __future__ import annotations

import numpy as np
import pytest

from lidarlift.classes import NUSCENES16 as S
from lidarlift.pseudolabels import active
from lidarlift.pseudolabels import clicks as ck
from lidarlift.pseudolabels.annotator import answer_next_clicks
from lidarlift.pseudolabels.propagate import Evidence, GraphParams

#: the scene's parts: (class, segment id, points); ground first
PARTS = [("driveable_surface", -1), ("manmade", 0), ("car", 1), ("car", 2), ("traffic_cone", 3)]


def scene(seed: int = 0) -> tuple[Evidence, np.ndarray, np.ndarray]:
    """A road (2600 points), a wall behind it (1024), two cars (400 each) and one traffic cone (25
    points, 0.7 m tall) standing apart. Returns (evidence, truth (N,) uint8, instance (N,) int64)."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(4, 30, 0.4), np.arange(-8, 8, 0.4))
    road = np.c_[gx.ravel(), gy.ravel(), np.full(gx.size, -1.8)]
    wy, wz = np.meshgrid(np.arange(-8, 8, 0.25), np.arange(-1.6, 2.4, 0.25))
    wall = np.c_[np.full(wy.size, 32.0), wy.ravel(), wz.ravel()]

    def box(centre, size, n):
        return np.asarray(centre) + rng.uniform(-0.5, 0.5, (n, 3)) * np.asarray(size)

    car_a = box((12, -4, -1.05), (4.4, 1.8, 1.5), 400)
    car_b = box((20, 4, -1.05), (4.4, 1.8, 1.5), 400)
    cone = box((14, 4, -1.45), (0.4, 0.4, 0.7), 25)
    parts = [road, wall, car_a, car_b, cone]
    xyz = np.concatenate(parts).astype(np.float32)
    truth = np.concatenate([np.full(len(p), S.index(c)) for p, (c, _) in zip(parts, PARTS)]).astype(np.uint8)
    seg = np.concatenate([np.full(len(p), s) for p, (_, s) in zip(parts, PARTS)]).astype(np.int32)
    instance = np.concatenate([np.full(len(p), k if S.thing_mask[S.index(c)] else 0) for k, (p, (c, _)) in
                               enumerate(zip(parts, PARTS))]).astype(np.int64)
    ground = seg < 0
    ev = Evidence(xyz=xyz, ground=ground, segment_id=seg, ground_cell=np.where(ground, (xyz[:, 0] // 5).astype(np.int32), -1),
                  fov=np.ones(len(xyz), bool))
    return ev, truth, instance


GRAPH = GraphParams.from_config(dict(beam_spacing_deg=1.33))  # no beam structure to measure in a hand-built scene: one beam = 1.33 deg


def truth_answer(truth: dict[str, np.ndarray]):
    """The simulated annotator in memory: each proposal gets its true class."""
    def answer(proposals: dict[str, active.Proposals]) -> dict[str, ck.SampleClicks]:
        out = {}
        for t, p in proposals.items():
            lab = truth[t][p.point_index]
            out[t] = ck.SampleClicks(p.point_index[lab > 0], lab[lab > 0], p.point_index[lab == 0])
        return out
    return answer


def test_active_clicks_find_the_small_object_the_uniform_protocol_misses():
    """Four clicks: the uniform protocol gives them to the four largest objects (road, wall, both cars)
    and none to the cone; the active chooser, seeing after its first round that the cone is an open
    region unlike anything clicked, clicks it. Every proposal is a real point of an open region."""
    ev, truth, instance = scene()
    cone = truth == S.index("traffic_cone")
    uniform = ck.budget_clicks(ev.xyz, truth, instance, S, 4 / ev.n, ck.click_rng(0, "s"))
    assert len(uniform) == 4 and not cone[uniform.point_index].any()

    chooser = active.KeyframeChooser(ev, S, GRAPH, ck.click_rng(0, "s"))
    got = active.click_rounds({"s": chooser}, {"s": 4}, 2, truth_answer({"s": truth}))["s"]
    assert len(got) == 4 and cone[got.point_index].any()
    assert np.array_equal(got.label, truth[got.point_index])
    first = chooser.propose(ck.SampleClicks.empty(), 2)[0]  # round 1: the largest open region first
    assert truth[first.point_index[0]] == S.index("driveable_surface") and first.reason[0] == "unreached"


def test_network_disagreement_is_asked_about():
    """With a round-0 network that calls the (labelled) wall vegetation, the next click goes there with
    reason 'disagree'; without a prediction nobody asks about the wall again."""
    ev, truth, _ = scene()
    parts = [np.flatnonzero(np.r_[truth == S.index(c)] & (ev.segment_id == s)) for c, s in PARTS]
    first = np.array([p[len(p) // 2] for p in parts])
    clicked = ck.SampleClicks(np.sort(first), truth[np.sort(first)])
    pred = truth.copy()
    wall = truth == S.index("manmade")
    pred[wall] = S.index("vegetation")
    p, labels = active.KeyframeChooser(ev, S, GRAPH, ck.click_rng(0, "s"), pred).propose(clicked, 1)
    assert (labels.label[wall] == S.index("manmade")).mean() > 0.9  # the wall's click labelled it
    assert p.reason == ["disagree"] and wall[p.point_index[0]]
    q, _ = active.KeyframeChooser(ev, S, GRAPH, ck.click_rng(0, "s")).propose(clicked, 1)
    assert "disagree" not in q.reason


def test_next_clicks_file_round_trip(tmp_path):
    """The next-clicks file: written with an empty class column (read back: nothing answered yet, also
    when an editor dropped the trailing tabs), answered by the simulated annotator from the truth
    (ignore where the point has no class), read back as a clicks file equal to what it meant."""
    rng = np.random.default_rng(1)
    truth = {"tokA": rng.integers(0, 17, 500).astype(np.uint8), "tokB": rng.integers(1, 17, 300).astype(np.uint8)}
    truth["tokA"][[7, 11]] = 0  # noise: the annotator answers ignore
    proposals = {"tokA": np.array([300, 7, 42, 11, 499]), "tokB": np.array([0, 150])}
    xyz = {t: rng.normal(size=(500, 3)).astype(np.float32) for t in truth}
    path = tmp_path / "clicks" / "next.tsv"
    ck.write_next_clicks(path, {t: (i, xyz[t][i], ["unreached"] * len(i)) for t, i in proposals.items()}, S)
    lines = path.read_text().splitlines()
    assert lines[1].split("\t") == list(ck.NEXT_HEADER) and lines[2].split("\t")[-1] == ""
    counts = {t: len(v) for t, v in truth.items()}
    assert all(len(c.asked) == 0 for c in ck.read_clicks(path, S, counts).values())
    stripped = tmp_path / "stripped.tsv"
    stripped.write_text("\n".join(l.rstrip("\t") for l in lines) + "\n")
    assert all(len(c.asked) == 0 for c in ck.read_clicks(stripped, S, counts).values())

    assert answer_next_clicks(path, truth, S) == 7
    back = ck.read_clicks(path, S, counts)
    for t, idx in proposals.items():
        meant = truth[t][idx]
        order = np.argsort(idx[meant > 0])
        assert back[t].point_index.tolist() == idx[meant > 0][order].tolist()
        assert back[t].label.tolist() == meant[meant > 0][order].tolist()
        assert sorted(back[t].ignored.tolist()) == sorted(idx[meant == 0].tolist())
    row = path.read_text().splitlines()[2].split("\t")
    assert row[:2] == ["tokA", "300"] and float(row[2]) == pytest.approx(xyz["tokA"][300, 0], abs=1e-3)
    assert row[5] == "unreached" and row[6] == S.classes[truth["tokA"][300] - 1]
    # the answered file is a clicks file of the merged kind too: ignore rows survive a rewrite
    ck.write_clicks(tmp_path / "merged.tsv", back, S)
    again = ck.read_clicks(tmp_path / "merged.tsv", S, counts)
    assert all(np.array_equal(again[t].ignored, back[t].ignored) and np.array_equal(again[t].label, back[t].label) for t in back)


def test_bad_next_clicks_answers_name_the_line(tmp_path):
    """An unknown class in the answered file names the file and line; so does a point answered twice
    with two classes (a clicks file and a next-clicks file read together)."""
    path = tmp_path / "next.tsv"
    ck.write_next_clicks(path, {"tokA": (np.array([3]), np.zeros((1, 3)), ["novel"])}, S)
    path.write_text(path.read_text().replace("novel\t", "novel\tunicorn"))
    with pytest.raises(ck.ClickError, match=r"line 3: unknown class 'unicorn'"):
        ck.read_clicks(path, S, {"tokA": 10})
    path.write_text("sample_token\tpoint_index\tclass\ntokA\t3\tcar\ntokA\t3\tignore\n")
    with pytest.raises(ck.ClickError, match="clicked with two classes"):
        ck.read_clicks(path, S, {"tokA": 10})


def test_round_budgets_spend_exactly_the_budget():
    assert active.round_budgets(10, 3) == [4, 3, 3] and active.round_budgets(2, 3) == [1, 1, 0]



def test_novel_click_goes_to_the_object_that_stands_alone():
    """A wall cut into pre-segments 1.2 m wide (each small enough to be a novel unit, but fragments of a
    16 m object) and a board of the same shape and points as one piece (a sign, 1.2 m wide, 4 m tall)
    standing 4 m from everything: the board stands alone (its cluster of points is at most OBJECT_MAX_M
    across), the wall's pieces do not; with the road, both cars and the cone clicked, the one novel
    click goes to the board, not to a piece of the wall that looks the same."""
    ev, truth, _ = scene()
    wall = truth == S.index("manmade")
    seg = ev.segment_id.copy()
    seg[wall] = 10 + ((ev.xyz[wall, 1] + 8) // 1.2).astype(np.int32)  # the wall in pieces 1.2 m wide
    piece = np.flatnonzero(seg == 12)
    board = ev.xyz[piece] + np.asarray((-4.0, 12.0, 0.0), np.float32)  # x 28 (wall at 32), y 2.4..3.6 -> 14.4..15.6
    k = len(board)
    ev = Evidence(xyz=np.r_[ev.xyz, board].astype(np.float32), ground=np.r_[ev.ground, np.zeros(k, bool)],
                  segment_id=np.r_[seg, np.full(k, 99)].astype(np.int32),
                  ground_cell=np.r_[ev.ground_cell, np.full(k, -1)].astype(np.int32), fov=np.ones(ev.n + k, bool))
    truth = np.r_[truth, np.full(k, S.index("manmade"))].astype(np.uint8)
    on_board = np.r_[np.zeros(len(seg), bool), np.ones(k, bool)]
    chooser = active.KeyframeChooser(ev, S, GRAPH, ck.click_rng(0, "s"))
    assert chooser._alone(np.flatnonzero(on_board))
    assert not any(chooser._alone(np.flatnonzero(ev.segment_id == s)) for s in np.unique(seg[wall]))
    parts = [np.flatnonzero((truth == S.index(c)) & (ev.segment_id == s)) for c, s in PARTS if c != "manmade"]
    first = np.sort([p[len(p) // 2] for p in parts])
    p, _ = chooser.propose(ck.SampleClicks(first, truth[first]), 1, min_novel=1)
    assert p.reason == ["novel"] and on_board[p.point_index[0]]
