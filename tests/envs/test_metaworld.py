"""Meta-World v3 through vlaforge: task sets, instructions, seeding, cameras, and every task's expert."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.envs import metaworld as mw
from vlaforge.errors import InputError

mw.configure_rendering()  # OSMesa unless MUJOCO_GL says otherwise; before any test imports mujoco

pytestmark = pytest.mark.sim


def _top_minus_bottom(img: np.ndarray) -> float:
    """Mean brightness of the top third minus the bottom third of an image."""
    h = img.shape[0]
    img = img.astype(np.float64)
    return float(img[: h // 3].mean() - img[-(h // 3) :].mean())


# -- task sets and words --------------------------------------------------------------------------------


def test_task_lists_match_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

    assert list(ALL_V3_ENVIRONMENTS) == mw.ALL_TASKS
    assert list(MT10_V3) == mw.MT10
    assert len(set(mw.ALL_TASKS)) == 50


def test_difficulty_groups_are_28_11_6_5_and_cover_all_tasks():
    counts = {g: sum(v == g for v in mw.DIFFICULTY.values()) for g in mw.GROUPS}
    assert counts == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert sorted(mw.DIFFICULTY) == sorted(mw.ALL_TASKS)
    assert mw.DIFFICULTY["reach-v3"] == "easy"
    assert mw.DIFFICULTY["stick-pull-v3"] == "very_hard"


def test_resolve_tasks():
    assert mw.resolve_tasks("mt10") == mw.MT10
    assert mw.resolve_tasks("MT50") == mw.ALL_TASKS
    assert len(mw.resolve_tasks("very_hard")) == 5
    assert mw.resolve_tasks("reach-v3,drawer-open") == ["reach-v3", "drawer-open-v3"]
    assert mw.resolve_tasks(["push-v3", "push-v3", "hard"])[0] == "push-v3"
    assert len(mw.resolve_tasks("easy,medium")) == 39
    with pytest.raises(ValueError, match="did you mean 'drawer-open-v3'"):
        mw.resolve_tasks("drawer-opne-v3")
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        mw.resolve_tasks("fly-to-the-moon")


def test_every_task_has_an_instruction_and_three_distinct_heldout_paraphrases():
    assert sorted(mw.INSTRUCTIONS) == sorted(mw.ALL_TASKS)
    assert sorted(mw.HELDOUT_INSTRUCTIONS) == sorted(mw.ALL_TASKS)
    assert len(set(mw.INSTRUCTIONS.values())) == 50  # no two tasks share words
    for task in mw.ALL_TASKS:
        train = mw.instruction(task)
        assert train == mw.INSTRUCTIONS[task] and train.strip()
        held = mw.HELDOUT_INSTRUCTIONS[task]
        assert len(held) >= 3 and len(set(held)) == len(held), task
        assert train not in held, task
        assert mw.instruction(task, "heldout", 1) == held[1]
    with pytest.raises(ValueError, match="split"):
        mw.instruction("reach-v3", "test")


def test_embodiment_and_control_rate():
    emb = mw.embodiment(cameras="corner2,topview", image_size=64)
    assert emb.action_dim == 4 and emb.state_dim == 4
    assert emb.normalize_mask == [True, True, True, False]
    assert emb.camera_names == ["corner2", "topview"] and emb.image_size == 64
    assert emb.robot_type == "sawyer"
    assert pytest.approx(80.0) == mw.CONTROL_HZ


def test_episode_seed_is_stable_and_distinct():
    assert mw.episode_seed(0, "reach-v3", 3) == mw.episode_seed(0, "reach-v3", 3)
    # A fixed value: the seed must not change across processes or Python versions.
    assert mw.episode_seed(0, "reach-v3", 0) == 1159957087
    seeds = {mw.episode_seed(s, t, i) for s in (0, 1) for t in mw.MT10 for i in range(20)}
    assert len(seeds) == 2 * 10 * 20


def test_every_expert_class_resolves():
    import metaworld.policies as policies

    for task in mw.ALL_TASKS:
        assert mw.expert_class_name(task) == policies.ENV_POLICY_MAP[task].__name__, task
    assert mw.expert_class_name("peg-insert-side-v3") == "SawyerPegInsertionSideV3Policy"


# -- one env --------------------------------------------------------------------------------------------


def test_same_seed_same_initial_state_and_image_different_seed_different_objects():
    with mw.MetaWorldEnv("pick-place-v3", image_size=48) as env:
        a = env.reset(seed=11)
        raw_a = env.raw_observation.copy()
        for _ in range(15):  # disturb the sim between the two resets
            env.step(env.expert_action())
        b = env.reset(seed=12)
        raw_b = env.raw_observation.copy()
        c = env.reset(seed=11)
        raw_c = env.raw_observation.copy()
    np.testing.assert_array_equal(raw_a, raw_c)
    np.testing.assert_array_equal(a.images["corner2"], c.images["corner2"])
    np.testing.assert_array_equal(a.state, c.state)
    # raw[4:7] is the puck position and raw[-3:] the goal: both are drawn from the seed.
    assert np.abs(raw_a[4:7] - raw_b[4:7]).max() > 1e-3
    assert np.abs(raw_a[-3:] - raw_b[-3:]).max() > 1e-3
    assert not np.array_equal(a.images["corner2"], b.images["corner2"])


@pytest.mark.parametrize("task", ["reach-v3", "window-open-v3", "peg-insert-side-v3"])
def test_first_frame_shows_the_drawn_scene_not_the_previous_one(task):
    """Meta-World's reset moves goal sites and static bodies in the model after its last mj_forward; the
    first frame must already show them where this episode's seed put them (it showed a stale scene), and
    reach's goal marker must stand at the drawn goal."""
    import mujoco

    with mw.MetaWorldEnv(task, image_size=64) as env:
        for seed in (3, 4):
            first = env.reset(seed=seed).images["corner2"]
            if task == "reach-v3":
                np.testing.assert_allclose(env._env.data.site("goal").xpos, env._env._target_pos, atol=1e-9)
            mujoco.mj_forward(env._env.model, env._env.data)
            np.testing.assert_array_equal(first, env.observe().images["corner2"])


def test_observation_contract_and_step():
    with mw.MetaWorldEnv(
        "reach-v3", cameras=["corner2", "topview", "gripperPOV"], image_size=40, max_steps=3
    ) as env:
        obs = env.reset(seed=0)
        assert set(obs.images) == {"corner2", "topview", "gripperPOV"}
        for img in obs.images.values():
            assert img.dtype == np.uint8 and img.shape == (40, 40, 3)
        assert obs.state.dtype == np.float32 and obs.state.shape == (4,)
        np.testing.assert_allclose(obs.state, env.raw_observation[:4].astype(np.float32))
        assert obs.instruction == mw.INSTRUCTIONS["reach-v3"]
        action = env.expert_action()
        assert action.dtype == np.float32 and action.shape == (4,) and np.all(np.abs(action) <= 1)
        dones = [env.step(np.array([5.0, 0.0, 0.0, 0.0]))[2] for _ in range(3)]  # out of range: clipped
        assert dones == [False, False, True]
        with pytest.raises(RuntimeError, match="max_steps"):
            env.step(action)
        env.reset(seed=0)
        with pytest.raises(ValueError, match="4 values"):
            env.step(np.zeros(3))


def test_unknown_camera_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid cameras are .*corner2.*gripperPOV"):
        mw.MetaWorldEnv("reach-v3", cameras="corner9")


def test_render_off_gives_no_images_and_the_same_state():
    with (
        mw.MetaWorldEnv("push-v3", render=False) as blind,
        mw.MetaWorldEnv("push-v3", image_size=32) as seeing,
    ):
        ob, os_ = blind.reset(seed=5), seeing.reset(seed=5)
        assert ob.images == {} and set(os_.images) == {"corner2"}
        for _ in range(10):
            ob = blind.step(blind.expert_action())[0]
            os_ = seeing.step(seeing.expert_action())[0]
        np.testing.assert_array_equal(ob.state, os_.state)


def test_corner2_is_upright_and_the_raw_render_is_not():
    """The upright corner2 view shows the grey floor beyond the table at the top and the dark robot
    pedestal and table legs at the bottom, so its top third is clearly brighter than its bottom third.
    The raw MuJoCo render (camera rolled by 180 degrees) shows the opposite; a vertical-only flip would
    pass the brightness check, so the left-right direction is checked on the pedestal, which stands on
    the left of the upright view."""
    with mw.MetaWorldEnv("reach-v3", image_size=64) as env:
        img = env.reset(seed=0).images["corner2"]
        raw = env.render_raw("corner2")
    assert _top_minus_bottom(img) > 5
    assert _top_minus_bottom(raw) < -5
    np.testing.assert_array_equal(img, raw[::-1, ::-1])
    dark = img.astype(np.float64).mean(-1) < 50  # (H, W) the black pedestal
    bottom = dark[img.shape[0] // 2 :]
    w = img.shape[1]
    assert bottom[:, : w // 2].sum() > 3 * bottom[:, w // 2 :].sum()


def test_corner2_lerobot_sits_where_lerobot_places_it():
    """`corner2_lerobot` is corner2 moved to the position LeRobot's Meta-World env gives it, (0.75, 0.075,
    0.7) in its source, with corner2's orientation: the camera in the simulation is there, looks the
    same way, and, nearer the table, sees the red arm larger than corner2 does from the same scene."""
    import mujoco

    with (
        mw.MetaWorldEnv("reach-v3", image_size=64) as far,
        mw.MetaWorldEnv("reach-v3", image_size=64, cameras="corner2_lerobot") as near,
    ):
        img_far, img_near = far.reset(seed=3).images["corner2"], near.reset(seed=3).images["corner2_lerobot"]
        cam = mujoco.mj_name2id(near._env.model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
        np.testing.assert_allclose(near._env.data.cam_xpos[cam], [0.75, 0.075, 0.7])
        np.testing.assert_allclose(near._env.data.cam_xmat[cam], far._env.data.cam_xmat[cam])
        assert near.embodiment.camera_names == ["corner2_lerobot"]

    def red(img):  # the Sawyer arm's share of the picture
        x = img.astype(np.int32)
        return float(((x[..., 0] > 120) & (x[..., 1] < 60) & (x[..., 2] < 60)).mean())

    assert red(img_near) > 1.5 * red(img_far) > 0  # 7.9% of the pixels against 3.6% at 64 px
    with pytest.raises(InputError, match="corner2 and corner2_lerobot are one MuJoCo camera"):
        mw.MetaWorldEnv("reach-v3", image_size=64, cameras="corner2,corner2_lerobot")


def test_render_can_be_chosen_per_call_and_renders_are_counted():
    """`step(render=False)` skips the cameras; `observe(render=True)` then shows the same state a rendering
    env shows after the same actions (rendering never changes the simulation)."""
    blind = mw.MetaWorldEnv("reach-v3", image_size=32, render=False)
    with blind, mw.MetaWorldEnv("reach-v3", image_size=32) as seeing:
        assert blind.reset(5).images == {} and blind.frames_rendered == 0
        seeing.reset(5)
        for _ in range(6):
            action = blind.expert_action()
            ob = blind.step(action, render=False)[0]
            os_ = seeing.step(action)[0]
            assert ob.images == {}
        np.testing.assert_array_equal(blind.observe(render=True).images["corner2"], os_.images["corner2"])
        np.testing.assert_array_equal(blind.observe().state, os_.state)
        assert blind.observe().images == {}  # None follows render_images
        assert blind.frames_rendered == 1 and seeing.frames_rendered == 7
        assert seeing.step(action, render=False)[0].images == {} and seeing.frames_rendered == 7


# -- all 50 tasks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", mw.ALL_TASKS)
def test_task_resets_renders_upright_and_expert_succeeds(task):
    with mw.MetaWorldEnv(task, image_size=32, max_steps=500) as env:
        obs = env.reset(seed=mw.episode_seed(0, task, 0))
        img = obs.images["corner2"]
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert _top_minus_bottom(img) > 5, "corner2 is not right side up"
        env.render_images = False  # the expert's rollout needs no pictures
        for attempt in range(4):
            env.reset(seed=mw.episode_seed(0, task, attempt))
            done = success = False
            while not (done or success):
                _, _, done, info = env.step(env.expert_action())
                success = info["success"]
            if success:
                return
    pytest.fail(f"the scripted expert of {task} failed on 4 seeds")
