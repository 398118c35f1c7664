"""Chaos: the whole pipeline (DirectRunner, real `ee` client, fake Earth Engine server) under 20 % 429s,
2 % 500s, 1 % stalls (+ one forced), one malformed reply and one permanent 400 loses no tile, duplicates
none and gives the same embeddings as a fault-free run. Same functions and checks as `benchmarks/chaos.py`
(which prints the figures); here retries do not wait (the fake_ee fixture records backoff sleeps)."""
from __future__ import annotations

import pytest

from benchmarks import chaos


@pytest.mark.slow
def test_faults_lose_nothing_duplicate_nothing_and_change_no_embedding(fake_ee, recipe_checkpoint_b64, tmp_path,
                                                                       model_cache, capsys):
    import earth_engine

    server = fake_ee.server
    clean, clean_scripted = chaos.run_case(server, "fault-free", str(tmp_path / "clean"),
                                           str(recipe_checkpoint_b64), chaos.DEFAULT_BBOX, None)
    run, scripted = chaos.run_case(server, "chaos", str(tmp_path / "chaos"), str(recipe_checkpoint_b64),
                                   chaos.DEFAULT_BBOX, chaos.chaos_faults(seed=11))
    with capsys.disabled():
        print("\n" + chaos.table([clean, run], chaos.max_embedding_difference(clean.audit, run.audit)))

    # The faults really happened, and the client really retried them.
    answers = run.answers
    assert answers["429"] >= 3 and answers["malformed"] == 1 and answers["stall"] >= 1 and answers["400"] >= 1
    assert sum(answers.values()) > run.audit.planned, "faults should have cost extra requests"
    assert fake_ee.sleeps, "retries should have backed off"

    # Every planned tile/window: a row or a dead letter with a reason; no duplicates; same embeddings.
    assert chaos.problems(clean.audit, run.audit, scripted, clean_scripted,
                          earth_engine.S2Settings().max_attempts) == []
    assert clean.audit.planned == run.audit.planned == 32
    assert clean.audit.rows + clean.audit.dead_letters == 32 and run.audit.rows + run.audit.dead_letters == 32
    assert run.audit.letters.keys() >= scripted.expected_letters.keys()
    for letter in run.audit.letters.values():
        assert letter["stage"] == "fetch" and letter["message"], letter
    assert run.audit.letters[next(k for k, v in scripted.expected_letters.items() if v == "HTTP400")][
        "message"].startswith("Image.select: Invalid argument")
