"""Meta-World v3's tasks: the MT50 and MT10 lists, difficulty groups, and vlaforge's instructions.

Sources: `metaworld.env_dict` (task order, MT10), Seo et al., "Masked World Models for Visual Control"
(CoRL 2022), appendix (difficulty groups); the instructions and held-out paraphrases are written for
vlaforge.
"""

from __future__ import annotations

# The MT50 order of Meta-World v3 (metaworld.env_dict.ALL_V3_ENVIRONMENTS).
ALL_TASKS: list[str] = [
    "assembly-v3",
    "basketball-v3",
    "bin-picking-v3",
    "box-close-v3",
    "button-press-topdown-v3",
    "button-press-topdown-wall-v3",
    "button-press-v3",
    "button-press-wall-v3",
    "coffee-button-v3",
    "coffee-pull-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "disassemble-v3",
    "door-close-v3",
    "door-lock-v3",
    "door-open-v3",
    "door-unlock-v3",
    "hand-insert-v3",
    "drawer-close-v3",
    "drawer-open-v3",
    "faucet-open-v3",
    "faucet-close-v3",
    "hammer-v3",
    "handle-press-side-v3",
    "handle-press-v3",
    "handle-pull-side-v3",
    "handle-pull-v3",
    "lever-pull-v3",
    "pick-place-wall-v3",
    "pick-out-of-hole-v3",
    "pick-place-v3",
    "plate-slide-v3",
    "plate-slide-side-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
    "peg-insert-side-v3",
    "peg-unplug-side-v3",
    "soccer-v3",
    "stick-push-v3",
    "stick-pull-v3",
    "push-v3",
    "push-wall-v3",
    "push-back-v3",
    "reach-v3",
    "reach-wall-v3",
    "shelf-place-v3",
    "sweep-into-v3",
    "sweep-v3",
    "window-open-v3",
    "window-close-v3",
]

# Meta-World's MT10 set (metaworld.env_dict.MT10_V3), in its order.
MT10: list[str] = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]

GROUPS = ("easy", "medium", "hard", "very_hard")

# Difficulty groups of Seo et al., "Masked World Models for Visual Control" (CoRL 2022), appendix,
# which sorts the 50 tasks by how hard they are for an RL agent: 28 easy, 11 medium, 6 hard, 5 very hard.
GROUP_TASKS: dict[str, list[str]] = {
    "easy": [
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ],
    "medium": [
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ],
    "hard": [
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ],
    "very_hard": [
        "shelf-place-v3",
        "disassemble-v3",
        "stick-pull-v3",
        "stick-push-v3",
        "pick-place-wall-v3",
    ],
}
DIFFICULTY: dict[str, str] = {task: group for group, tasks in GROUP_TASKS.items() for task in tasks}

# task -> (train instruction, held-out paraphrases). Written for vlaforge; the paraphrases are never
# used in training and serve to test whether a policy follows words rather than a task id.
_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "assembly-v3": (
        "put the ring onto the peg",
        (
            "slide the round nut down over the peg",
            "fit the ring on the peg",
            "assemble the nut onto the post",
        ),
    ),
    "basketball-v3": (
        "put the ball into the basket",
        ("dunk the ball in the hoop", "score the ball through the hoop", "drop the ball into the net"),
    ),
    "bin-picking-v3": (
        "move the block from one bin to the other",
        (
            "carry the cube over into the second bin",
            "transfer the block between the bins",
            "pick the cube out of its bin and drop it in the other one",
        ),
    ),
    "box-close-v3": (
        "put the lid on the box",
        ("close the box with its cover", "place the cover on top of the box", "shut the box using the lid"),
    ),
    "button-press-topdown-v3": (
        "press the button from above",
        ("push the button down from the top", "press down on the button", "hit the button from overhead"),
    ),
    "button-press-topdown-wall-v3": (
        "press the button from above behind the wall",
        (
            "reach past the wall and push the button down",
            "push the button down from the top, past the wall",
            "get around the wall and press down on the button",
        ),
    ),
    "button-press-v3": (
        "press the button",
        ("push the button in", "hit the button from the front", "push the button forward"),
    ),
    "button-press-wall-v3": (
        "press the button behind the wall",
        (
            "reach around the wall and push the button",
            "push the button that is past the wall",
            "get past the wall and press the button in",
        ),
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        ("start the coffee machine", "push the coffee maker's button", "switch on the espresso machine"),
    ),
    "coffee-pull-v3": (
        "pull the mug away from the coffee machine",
        (
            "take the cup out from under the coffee maker",
            "drag the mug back from the machine",
            "slide the cup out of the coffee machine",
        ),
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        (
            "slide the cup beneath the coffee maker",
            "move the mug into the coffee machine",
            "put the cup under the spout of the machine",
        ),
    ),
    "dial-turn-v3": (
        "turn the dial",
        ("rotate the knob", "twist the dial around", "spin the knob half a turn"),
    ),
    "disassemble-v3": (
        "take the ring off the peg",
        (
            "lift the nut up and off the post",
            "remove the ring from the peg",
            "pull the round nut off the peg",
        ),
    ),
    "door-close-v3": (
        "close the door",
        ("shut the door", "swing the door closed", "push the door shut"),
    ),
    "door-lock-v3": (
        "lock the door",
        ("turn the lock to lock the door", "rotate the door's latch down to lock it", "secure the door lock"),
    ),
    "door-open-v3": (
        "open the door",
        ("swing the door open", "pull the door open by its handle", "get the door open"),
    ),
    "door-unlock-v3": (
        "unlock the door",
        ("turn the lock to unlock the door", "rotate the door's latch to release it", "undo the door lock"),
    ),
    "hand-insert-v3": (
        "put the block into the hole",
        (
            "push the cube into the opening",
            "insert the block in the hole",
            "place the cube down into the hole",
        ),
    ),
    "drawer-close-v3": (
        "close the drawer",
        ("push the drawer shut", "slide the drawer closed", "shut the drawer"),
    ),
    "drawer-open-v3": (
        "open the drawer",
        ("pull the drawer out", "slide the drawer open", "pull the drawer open by its handle"),
    ),
    "faucet-open-v3": (
        "turn the faucet on",
        ("open the tap", "rotate the faucet handle to open it", "turn on the tap"),
    ),
    "faucet-close-v3": (
        "turn the faucet off",
        ("close the tap", "rotate the faucet handle to close it", "shut off the tap"),
    ),
    "hammer-v3": (
        "hammer the nail into the wall",
        (
            "drive the nail in with the hammer",
            "use the hammer to knock the nail in",
            "pound the nail with the hammer",
        ),
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        (
            "push the side handle down",
            "press down on the handle from the side",
            "lower the handle from its side",
        ),
    ),
    "handle-press-v3": (
        "press the handle down",
        ("push the handle down", "press down on the handle", "lower the handle"),
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        ("lift the side handle up", "raise the handle from its side", "pull up on the handle from the side"),
    ),
    "handle-pull-v3": (
        "pull the handle up",
        ("lift the handle", "raise the handle up", "pull up on the handle"),
    ),
    "lever-pull-v3": (
        "pull the lever up",
        ("lift the lever", "raise the lever arm", "swing the lever upward"),
    ),
    "pick-place-wall-v3": (
        "pick up the puck and place it at the goal behind the wall",
        (
            "lift the puck over the wall and put it on the target",
            "carry the puck past the wall to the goal",
            "move the puck across the wall to the target spot",
        ),
    ),
    "pick-out-of-hole-v3": (
        "pick the puck out of the hole",
        ("lift the puck up out of the hole", "take the puck out of the hole", "raise the puck from the hole"),
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        (
            "move the puck to the target",
            "carry the puck to the goal spot",
            "grab the puck and put it on the target",
        ),
    ),
    "plate-slide-v3": (
        "slide the plate into the goal",
        (
            "push the plate into the net",
            "slide the dish into the goal",
            "move the plate forward into the goal",
        ),
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the goal",
        (
            "push the plate into the net from the side",
            "slide the dish sideways into the goal",
            "move the plate across into the goal",
        ),
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the goal",
        (
            "pull the plate out of the net",
            "drag the dish back from the goal",
            "bring the plate back out of the goal",
        ),
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the goal",
        (
            "pull the plate out of the net from the side",
            "drag the dish sideways out of the goal",
            "bring the plate back out of the goal sideways",
        ),
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole from the side",
        (
            "push the peg sideways into the hole",
            "put the peg in the hole side-on",
            "slide the peg into the opening",
        ),
    ),
    "peg-unplug-side-v3": (
        "unplug the peg from the side",
        ("pull the peg out sideways", "remove the plug from the socket", "take the peg out of its hole"),
    ),
    "soccer-v3": (
        "push the ball into the goal",
        ("score a goal with the ball", "kick the soccer ball into the net", "roll the ball into the goal"),
    ),
    "stick-push-v3": (
        "push the bottle with the stick",
        (
            "use the stick to shove the bottle forward",
            "grab the stick and push the container with it",
            "move the bottle by pushing it with the stick",
        ),
    ),
    "stick-pull-v3": (
        "pull the bottle with the stick",
        (
            "use the stick to drag the bottle",
            "grab the stick and pull the container with it",
            "hook the bottle with the stick and pull it",
        ),
    ),
    "push-v3": (
        "push the puck to the goal",
        (
            "slide the puck to the target",
            "shove the puck onto the goal",
            "move the puck to the target by pushing",
        ),
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal",
        (
            "slide the puck past the wall to the target",
            "push the puck to the goal, going around the wall",
            "move the puck beyond the wall onto the target",
        ),
    ),
    "push-back-v3": (
        "pull the puck back to the goal",
        (
            "drag the puck back onto the target",
            "slide the puck backwards to the goal",
            "bring the puck back to the target",
        ),
    ),
    "reach-v3": (
        "reach the goal",
        ("move the gripper to the target", "touch the target point", "bring the hand to the goal position"),
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall",
        (
            "move the gripper over the wall to the target",
            "get the hand past the wall to the goal",
            "touch the target on the far side of the wall",
        ),
    ),
    "shelf-place-v3": (
        "put the block on the shelf",
        ("place the cube onto the shelf", "lift the block up onto the shelf", "set the cube on the shelf"),
    ),
    "sweep-into-v3": (
        "sweep the block into the hole",
        ("push the cube into the hole", "slide the block into the opening", "brush the cube into the hole"),
    ),
    "sweep-v3": (
        "sweep the block off the table",
        (
            "push the cube off the edge of the table",
            "slide the block off the table",
            "clear the cube off the table",
        ),
    ),
    "window-open-v3": (
        "open the window",
        ("slide the window open", "push the window open", "move the window pane to open it"),
    ),
    "window-close-v3": (
        "close the window",
        ("slide the window shut", "push the window closed", "move the window pane to close it"),
    ),
}
INSTRUCTIONS: dict[str, str] = {task: text[0] for task, text in _TEXT.items()}
HELDOUT_INSTRUCTIONS: dict[str, list[str]] = {task: list(text[1]) for task, text in _TEXT.items()}
