"""A store's own threshold (tbps calibrate --gallery): the threshold and match strength computed by hand on a
tiny store, --min-score auto choosing the store's threshold and saying so, the growth warning, empty
answers that explain themselves, unknown cameras, bundles without held-out captions and bad caption files.

The towers are the fake bundle's (tests/runtime_fakes.py): a caption's embedding is its colour words', a
crop's its mean colour's, so scores are known in advance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_fakes import COLOURS, make_fake_bundle

from cli_assertions import assert_user_error, run
from tbps_export.cli import calibrate_command
from tbps_runtime.atomic import sha256_file
from tbps_runtime.cli.search import rank_command
from tbps_runtime.contract import CAPTIONS_FILE
from tbps_runtime.errors import BundleError, ConfigError
from tbps_runtime.model.bundle import heldout_captions, load_manifest, write_manifest
from tbps_runtime.ranking import similarity
from tbps_runtime.search import PersonSearch
from tbps_runtime.store.calibration import (QUANTILES, StoreCalibration, calibrate_gallery, calibrate_store,
                                            describe_empty)
from tbps_runtime.store.local import LocalStore
from tbps_runtime.store.rows import CropRecord
from tbps_runtime.thresholds import false_match_threshold

T0 = 1_772_460_000.0  # 2026-03-02T14:00:00Z
STRANGERS = ["a person in a black coat", "a person in a white shirt", "a person in a yellow coat"]


@pytest.fixture(scope="module")
def search(fake_bundle):
    return PersonSearch.from_bundle(fake_bundle, threads=1)


def _rows(search: PersonSearch, colours: list[str], camera: str, start: int = 0):
    """One row per colour: the fake image tower's embedding of a crop of that colour."""
    pixels = [np.full((20, 10, 3), COLOURS[c], np.uint8) for c in colours]
    records = [CropRecord(source=f"/footage/{camera}.mp4", camera=camera, time=T0 + 7 + i, offset=float(i), frame=i,
                          box=(0.0, 0.0, 10.0, 20.0), score=0.9, track=start + i) for i, _ in enumerate(colours)]
    return search.embed_images(pixels), records


def _store(path: Path, search: PersonSearch, fake_bundle: Path, cameras: dict[str, list[str]]) -> Path:
    store = LocalStore.create(path, fingerprint=search.fingerprint, num_slots=search.manifest.num_slots,
                              embed_dim=search.manifest.embed_dim, bundle=fake_bundle)
    with store.writing():
        for n, (camera, colours) in enumerate(cameras.items()):
            store.append(*_rows(search, colours, camera, start=10 * n))
    return path


@pytest.fixture()
def red_store(tmp_path, search, fake_bundle):
    """cam1: red, green; cam2: blue, red."""
    return _store(tmp_path / "s", search, fake_bundle, {"cam1": ["red", "green"], "cam2": ["blue", "red"]})


def _captions(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- the threshold and the strength, by hand ------------------------------------------------------------

def test_threshold_and_strength_equal_the_hand_computed_ones(red_store, search, tmp_path):
    store = LocalStore.open(red_store)
    rows = store.embeddings(np.concatenate([ids for ids, _ in store.iter_rows()]))  # (4, K, d)
    embedded = search.embed_texts(STRANGERS)  # (3, K, d)
    scores = similarity(embedded, rows).reshape(-1)  # the 12 impostor scores
    calibration = calibrate_store(store, embedded, search.fingerprint, "test", 0.25)
    # At f = 0.25 of 12 scores, 3 may pass: the threshold is just above the 4th highest.
    fourth = np.sort(scores.astype(np.float32))[-4]
    assert calibration.value == pytest.approx(float(np.nextafter(fourth, np.float32(np.inf))), abs=0)
    assert calibration.value == false_match_threshold(scores, 0.25)
    assert (scores >= np.float32(calibration.value)).sum() == 3
    assert (calibration.captions, calibration.rows, calibration.rows_at_calibration) == (3, 4, 4)
    assert len(calibration.quantiles) == QUANTILES
    ordered = np.sort(scores.astype(np.float64))
    # The quantiles are the impostor scores' own: the lowest, the median, the highest.
    assert calibration.quantiles[0] == pytest.approx(ordered[0], abs=1e-6)
    assert calibration.quantiles[-1] == pytest.approx(ordered[-1], abs=1e-6)
    assert calibration.quantiles[(QUANTILES - 1) // 2] == pytest.approx(np.median(ordered), abs=1e-6)
    assert calibration.strength(ordered[0] - 1) == 0.0 and calibration.strength(ordered[-1] + 1) == 1.0
    reread = LocalStore.open(red_store).calibration()  # recorded in the store's meta
    assert reread == StoreCalibration.from_text(calibration.to_text(), "x")
    assert reread.value == calibration.value and reread.fingerprint == search.fingerprint


def test_strength_is_the_fraction_of_impostor_scores_below():
    """Five knots 0..4 (quantiles at 0, 1/4, ..., 1): a score of 2.5 has 62.5 % of the impostors below it."""
    calibration = StoreCalibration(value=3.5, false_match_rate=0.25, captions=1, rows=5, rows_at_calibration=5,
                                   fingerprint="f", captions_from="test", created=0.0,
                                   quantiles=(0.0, 1.0, 2.0, 3.0, 4.0))
    assert [calibration.strength(s) for s in (-1.0, 0.0, 1.0, 2.5, 4.0, 9.0)] == [0.0, 0.0, 0.25, 0.625, 1.0, 1.0]
    assert calibration.grown(7) is False and calibration.grown(8) is True  # 5 rows + 50 % = 7.5


def test_the_command_records_the_threshold_in_the_store(red_store, tmp_path):
    result = run(calibrate_command, ["--gallery", red_store, "--captions", _captions(tmp_path, STRANGERS),
                                     "--false-match-rate", 0.25, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["captions"] == 3 and record["rows_at_calibration"] == 4 and record["captions_from"] == "captions.txt"
    assert LocalStore.open(red_store).calibration().value == record["value"]


# ---- --min-score auto ------------------------------------------------------------------------------------

def _rank(store, query, *extra):
    result = run(rank_command, ["--gallery", store, "--query", query, "--json", "-k", 10, *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def _calibrate(store, tmp_path, rate=0.25):
    result = run(calibrate_command, ["--gallery", store, "--captions", _captions(tmp_path, STRANGERS),
                                     "--false-match-rate", rate, "-q"])
    assert result.exit_code == 0, result.output


def test_auto_picks_the_stores_threshold_and_says_so(red_store, fake_bundle, tmp_path):
    calibrated = tmp_path / "calibrated.bundle"
    shutil.copytree(fake_bundle, calibrated)
    manifest = load_manifest(calibrated)
    record = {"value": 2.99, "false_match_rate": 0.01, "true_match_rate": 0.5, "found_rate": 0.5,
              "dataset": "cuhk-pedes", "split": "val", "captions": 2, "images": 3, "matching_pairs": 2,
              "non_matching_pairs": 4}
    write_manifest(calibrated, manifest.__class__(**{**manifest.__dict__, "score_threshold": record}))
    hits, stderr = _rank(red_store, "a person in red", "--bundle", calibrated, "--min-score", "auto")
    assert hits and all(h["threshold"] == {"value": 2.99, "source": "bundle", "stale": False} for h in hits)
    assert "bundle's" in stderr and "another domain" in stderr and f"tbps calibrate --gallery {red_store}" in stderr
    assert all(h["strength"] is None for h in hits)  # the store is not calibrated yet
    _calibrate(red_store, tmp_path)
    value = LocalStore.open(red_store).calibration().value
    hits, stderr = _rank(red_store, "a person in red", "--bundle", calibrated, "--min-score", "auto")
    assert hits and all(h["threshold"] == {"value": value, "source": "store", "stale": False} for h in hits)
    assert all(h["score"] >= value for h in hits) and "another domain" not in stderr
    assert all(0 <= h["strength"] <= 1 for h in hits) and hits[0]["strength"] == 1.0  # red above every stranger


def test_a_calibration_by_another_bundle_is_not_used(red_store, search, tmp_path):
    _calibrate(red_store, tmp_path)
    store = LocalStore.open(red_store)
    record = json.loads(store.calibration().to_text())
    with store.writing():
        store.record_calibration(json.dumps({**record, "fingerprint": "0" * 64}))
    with pytest.raises(ConfigError, match="no calibrated score threshold"):  # the fake bundle has none either
        search.threshold_for("auto", store)
    assert search.threshold_for(2.5, store).calibration is None  # nor its strengths


def test_a_store_grown_by_half_warns_with_the_command(red_store, search, fake_bundle, tmp_path):
    _calibrate(red_store, tmp_path)
    _, stderr = _rank(red_store, "a person in red", "--min-score", "auto")
    assert "has grown" not in stderr
    store = LocalStore.open(red_store)
    with store.writing():
        store.append(*_rows(search, ["white"], "cam1", start=30))  # 4 -> 5 rows: +25 %
    _, stderr = _rank(red_store, "a person in red", "--min-score", "auto")
    assert "has grown" not in stderr
    with store.writing():
        store.append(*_rows(search, ["black"], "cam2", start=40))  # 6 rows: +50 %
    hits, stderr = _rank(red_store, "a person in red", "--min-score", "auto")
    assert "grown from 4 to 6 rows" in stderr and f"tbps calibrate --gallery {red_store}" in stderr
    assert hits[0]["threshold"]["stale"] is True


def test_an_empty_answer_explains_itself(red_store, tmp_path):
    _calibrate(red_store, tmp_path, rate=0.01)
    value = LocalStore.open(red_store).calibration().value
    everything, _ = _rank(red_store, "a person in yellow", "--camera", "cam2")
    best = everything[0]
    assert best["score"] < value  # yellow is on no camera: every score is an impostor's
    hits, stderr = _rank(red_store, "a person in yellow", "--camera", "cam2", "--min-score", "auto")
    assert hits == []
    assert f"0 hits at >= {value:.4g} (store threshold); best score {best['score']:.4g} (cam2, " in stderr
    assert best["time_iso"][11:19] in stderr


def test_describe_empty_without_rows():
    from tbps_runtime.store.calibration import ScoreThreshold

    assert describe_empty(ScoreThreshold(3.83, "bundle"), None) == \
        "0 hits at >= 3.83 (bundle threshold); no rows pass the filters"


def test_an_unknown_camera_or_source_is_an_error_listing_the_known_ones(red_store):
    assert_user_error(run(rank_command, ["--gallery", red_store, "--query", "red", "--camera", "cam9"]),
                      "--camera 'cam9' is not in the store: its cameras are cam1, cam2")
    assert_user_error(run(rank_command, ["--gallery", red_store, "--query", "red", "--camera", "cam1", "--source",
                                         "/footage/cam3.mp4"]),
                      "--source '/footage/cam3.mp4' is not in the store: its sources are /footage/cam1.mp4, "
                      "/footage/cam2.mp4")
    hits, _ = _rank(red_store, "a person in red", "--camera", "cam2", "--source", "/footage/cam2.mp4")
    assert {h["camera"] for h in hits} == {"cam2"}  # known names search as before


# ---- captions ---------------------------------------------------------------------------------------------

def test_a_bundle_without_held_out_captions_needs_a_caption_file(red_store, fake_bundle):
    assert heldout_captions(fake_bundle, load_manifest(fake_bundle)) is None
    assert_user_error(run(calibrate_command, ["--gallery", red_store]), "carries no held-out captions",
                      "--captions FILE")
    assert LocalStore.open(red_store).calibration() is None


def test_a_bundle_with_held_out_captions_calibrates_on_them(tmp_path, search):
    bundle = make_fake_bundle(tmp_path / "b")
    (bundle / CAPTIONS_FILE).write_text("\n".join(STRANGERS) + "\n", encoding="utf-8")
    manifest = load_manifest(bundle)
    manifest.files[CAPTIONS_FILE] = sha256_file(bundle / CAPTIONS_FILE)
    write_manifest(bundle, manifest)
    assert heldout_captions(bundle, load_manifest(bundle)) == STRANGERS
    own = PersonSearch.from_bundle(bundle, threads=1)
    store = LocalStore.open(_store(tmp_path / "s", own, bundle, {"cam1": ["red", "green"]}))
    calibration = calibrate_gallery(own, store, None, 0.25)
    assert (calibration.captions, calibration.captions_from) == (3, "bundle")
    (bundle / CAPTIONS_FILE).write_text("changed\n")  # the manifest's SHA-256 no longer matches
    with pytest.raises(BundleError, match="modified"):
        calibrate_gallery(own, store, None, 0.25)


@pytest.mark.parametrize("content, fragment", [(b"", "holds no captions"), (b"\n  \n", "holds no captions"),
                                               (b"a person in \xff red\n", "is not UTF-8")])
def test_a_bad_caption_file_is_one_error_line(red_store, tmp_path, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    assert_user_error(run(calibrate_command, ["--gallery", red_store, "--captions", path]), fragment)
    assert_user_error(run(calibrate_command, ["--gallery", red_store, "--captions", tmp_path / "none.txt"]),
                      "not found")
    assert LocalStore.open(red_store).calibration() is None


def test_calibrate_refuses_mixed_modes(red_store, tmp_path):
    assert_user_error(run(calibrate_command, ["--gallery", red_store, "--dataset", "cuhk-pedes", "--root", tmp_path]),
                      "give one or the other")
    assert_user_error(run(calibrate_command, []), "--gallery STORE")


# ---- the service ------------------------------------------------------------------------------------------

def test_the_service_says_its_threshold_strength_and_why_an_answer_is_empty(red_store, tmp_path):
    pytest.importorskip("fastapi", reason="the service needs FastAPI: pip install 'tbps[serve]'")
    from serve_clients import serving

    _calibrate(red_store, tmp_path, rate=0.01)
    value = LocalStore.open(red_store).calibration().value
    with serving(red_store) as client:
        doc = client.post("/search", json={"query": "a person in red", "min_score": "auto"}).json()
        assert doc["threshold"] == {"value": value, "source": "store", "stale": False}
        assert doc["results"][0] and doc["results"][0][0]["strength"] == 1.0 and doc["empty"] == [None]
        assert "(store threshold)" in doc["search"]
        doc = client.post("/search", json={"query": "a person in yellow", "min_score": "auto"}).json()
        assert doc["results"] == [[]] and doc["empty"][0].startswith(f"0 hits at >= {value:.4g} (store threshold); "
                                                                     "best score ")
        plain = client.post("/search", json={"query": "a person in yellow"}).json()
        assert plain["threshold"] is None and 0 <= plain["results"][0][0]["strength"] < 1
        refused = client.post("/search", json={"query": "red", "filters": {"cameras": ["cam9"]}})
        assert refused.status_code == 400
        assert "filters.cameras 'cam9' is not in the store: its cameras are cam1, cam2" in refused.text
