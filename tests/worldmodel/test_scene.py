"""Success judged from the scene's state (`vlaforge.worldmodel.scene`), and the scene Meta-World reports."""

import numpy as np
import torch

from vlaforge.worldmodel.data import Episodes
from vlaforge.worldmodel.scene import SceneJudge, fit_scene_judge, on_predicted
from vlaforge.worldmodel.state import fit_state, open_loop_error


def drawer_world(episodes: int = 40, steps: int = 48, seed: int = 0) -> Episodes:
    """A hand (x) moved 4 cm per unit of action, and a drawer (its position d, the scene) that moves with
    the hand while the gripper (the 2nd action) is closed and the hand is within 5 cm of it. Two tasks from
    one scene: "open" succeeds once d is 15 cm above where it started, "close" once 15 cm below. Half of
    each task's episodes drive towards their goal with the gripper closed, half wander; the last 2 of each task are held out."""
    rng = np.random.default_rng(seed)
    states, scene, actions, success, bounds, tasks, held = [], [], [], [], [], [], []
    for e in range(episodes):
        task = ("open", "close")[e % 2]
        d0 = rng.uniform(-0.1, 0.1)
        x, d, direction = d0 + rng.uniform(-0.04, 0.04), d0, (1.0 if task == "open" else -1.0)
        start = len(states)
        for _ in range(steps):
            drive = e % 4 < 2  # gripper closed, towards the goal
            a = (
                np.array([direction * rng.uniform(0.3, 1.0), rng.uniform(0.2, 1)])
                if drive
                else rng.uniform(-1, 1, 2)
            )
            done = (d - d0 >= 0.15) if task == "open" else (d - d0 <= -0.15)
            states.append([x, a[1] > 0])
            scene.append([d])
            success.append(done)
            actions.append(a)
            dx = 0.04 * a[0]
            if a[1] > 0 and abs(x - d) < 0.05:
                d += dx
            x += dx
        bounds.append((start, len(states)))
        tasks.append(task)
        if e >= episodes - 4:
            held.append(e)
    n = len(states)
    return Episodes(
        frames=np.zeros((n, 4, 4, 3), np.uint8), actions=np.array(actions, np.float32),
        success=np.array(success, bool), bounds=bounds, heldout=held, instructions=tasks,
        sources=[("drawer", e) for e in range(episodes)], camera="c", fps=10.0, tasks=tasks,
        states=np.array(states, np.float32), scene=np.array(scene, np.float32),
    )  # fmt: skip


def test_inputs_are_the_robot_the_scene_and_its_change():
    x = SceneJudge.inputs(np.array([[1.0, 2.0]]), np.array([[0.5, 0.25]]), np.array([[0.25, 1.0]]))
    np.testing.assert_array_equal(x, [[1.0, 2.0, 0.5, 0.25, 0.25, -0.75]])


def test_the_scene_judge_reads_each_task_success_on_real_and_predicted_states():
    torch.set_num_threads(1)
    eps = drawer_world()
    judge, report = fit_scene_judge(eps, steps=800, seed=0)
    assert report["tasks"] == ["close", "open"] and report["successful_frames"] > 0
    # The same drawer displacement is a success for one task and not the other: without the task (or the
    # change since the start) no judge gets both right. Measured: balanced accuracy 0.99 on the held-out
    # real states.
    assert report["balanced_accuracy"] > 0.95, report
    hand, start = np.array([[0.21, 1.0]] * 2), np.zeros((2, 1))
    out = judge.prob(hand, np.array([[0.2]] * 2), start, np.array([0, 1]))  # "close", "open"
    assert out[1] > 0.9 and out[0] < 0.1, out  # the drawer 20 cm out: "open" done, "close" not
    back = judge.prob(hand * [[-1, 1]], np.array([[-0.2]] * 2), start, np.array([0, 1]))
    assert back[0] > 0.9 and back[1] < 0.1, back
    # With the robot and drawer predicted together from the first state and the actions (stride 4), the
    # judge still sees the held-out successes where the simulator would.
    full = Episodes(**{**eps.__dict__, "states": np.concatenate([eps.states, eps.scene], 1)})
    model, _, _ = fit_state(full, stride=4, steps=1500, batch_size=128, lr=3e-3, width=64, seed=0)
    err = open_loop_error(model, full, eps.heldout, slice(2, None))
    assert err["error_mean"] < 0.5 * err["error_mean_first_state_kept"], err
    model.robot_dim = 2
    check = on_predicted(judge, model, eps, eps.heldout)
    assert set(check) == {"open", "close"} and all(c["episodes"] == 2 for c in check.values())
    for task, c in check.items():
        assert c["successes"] > 0 and c["tpr"] >= 0.8, (task, c)
    # A judge of the predicted states learns and is calibrated on them (the frames every stride)
    on_pred, rep = fit_scene_judge(eps, steps=800, seed=0, predictor=model)
    assert rep["states"] == "predicted" and rep["frames"] == 4 * (48 // 4 - 1)
    assert rep["balanced_accuracy"] > 0.9, rep


def test_metaworld_reports_its_objects_and_goal_as_the_scene():
    from vlaforge.envs.metaworld import MetaWorldEnv
    from vlaforge.envs.metaworld.env import ENVIRONMENT_STATE_NAMES

    env = MetaWorldEnv("drawer-open-v3", image_size=32, render=False)
    assert len(ENVIRONMENT_STATE_NAMES) == 17
    env.reset(7)
    start = env.environment_state()
    success = False
    for _ in range(150):
        mw = env._env  # Meta-World's own env: its object and goal accessors
        scene = env.environment_state()
        np.testing.assert_allclose(scene[0:3], mw._get_pos_objects()[:3], atol=1e-6)
        np.testing.assert_allclose(scene[3:7], mw._get_quat_objects()[:4], atol=1e-6)
        np.testing.assert_allclose(scene[14:17], mw._target_pos, atol=1e-6)
        success = env.step(env.expert_action())[3]["success"]
        if success:
            break
    # the expert opened the drawer: its handle came from > 10 cm to within Meta-World's 3 cm of the goal
    end = env.environment_state()
    assert (
        success
        and np.linalg.norm(start[0:3] - start[14:17]) > 0.1
        and np.linalg.norm(end[0:3] - end[14:17]) <= 0.03
    )
