"""Recording only the videos an evaluation can still keep (`rollout.VideoGate`): the kept videos are those of
recording every episode, in any finishing order, and a real evaluation renders fewer episodes for them."""

import json
import random

from vlaforge.eval import rollout
from vlaforge.eval.rollout import Job, VideoGate
from vlaforge.eval.run import EvalConfig, _choose_videos, evaluate


def _gated_run(outcomes: dict[str, list[bool]], keep: int, in_flight: int, rng: random.Random) -> list[dict]:
    """Runs the jobs of every task in index order with up to `in_flight` unfinished at once, finishing a
    random one each time (as parallel workers do); returns the records, `video` set where recorded."""
    gate, todo, running, records = VideoGate(keep), [], [], []
    for task, outs in outcomes.items():
        todo += [Job(task, i, i, "w", f"{task}-{i}.mp4") for i in range(len(outs))]
    while todo or running:
        while todo and len(running) < in_flight:
            running.append(gate.admit(todo.pop(0)))
        job = running.pop(rng.randrange(len(running)))
        rec = {"task": job.task, "episode": job.episode, "success": outcomes[job.task][job.episode],
               "video": job.video}  # fmt: skip
        gate.finished(rec)
        records.append(rec)
    return records


def test_the_gate_keeps_the_videos_recording_everything_keeps():
    rng = random.Random(0)
    skipped = 0
    for trial in range(400):
        n = rng.randint(1, 12)
        outcomes = {t: [rng.random() < rng.random() for _ in range(n)] for t in ("a", "b")}
        keep, in_flight = rng.randint(0, 4), rng.randint(1, 6)
        records = _gated_run(outcomes, keep, in_flight, rng)
        for task, outs in outcomes.items():
            everything = [{"episode": i, "success": s, "video": "v"} for i, s in enumerate(outs)]
            gated = [r for r in records if r["task"] == task]
            assert _choose_videos(gated, keep) == _choose_videos(everything, keep), (trial, outs, keep)
            skipped += sum(r["video"] is None for r in gated)
    assert skipped > 1000  # and it does skip recordings: most trials have both outcomes early


def test_an_evaluation_records_only_what_it_can_keep(tmp_path, monkeypatch):
    written = []
    real = rollout.write_mp4

    def counting(frames, path, fps, crf):
        written.append(path)
        return real(frames, path, fps, crf)

    monkeypatch.setattr(rollout, "write_mp4", counting)
    out = tmp_path / "ev"
    # The expert on reach with 55 steps: episodes 0-4 succeed, 5 fails, 6 and 7 succeed (measured).
    evaluate(EvalConfig(policy="expert", tasks="reach-v3", episodes=8, max_steps=55, workers=0, videos=2,
                        baseline_image_size=32, instructions="train", out=out))  # fmt: skip
    info = json.loads((out / "eval_info.json").read_text())
    assert [e["success"] for e in info["episodes"]] == [True] * 5 + [False, True, True]
    kept = {e["episode"] for e in info["episodes"] if e["video"]}
    assert kept == {0, 5}  # the first success and the first failure, as when every episode is recorded
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["reach-v3_ep000.mp4", "reach-v3_ep005.mp4"]
    # episodes 6 and 7 start after a success and a failure have finished: never recorded
    assert sorted(int(str(p)[-7:-4]) for p in written) == [0, 1, 2, 3, 4, 5]
