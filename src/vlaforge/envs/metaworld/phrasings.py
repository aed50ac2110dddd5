"""Training phrasings of Meta-World's tasks: other ways to say each training instruction, drawn per sample
by instruction augmentation (`vlaforge.envs.phrasing`, `vlaforge train --instruction-aug`).

Written for vlaforge as data. Each entry is a pattern whose ``[a|b|c]`` groups expand to every choice
(`vlaforge.envs.phrasing.expand`). None of them may equal or contain a held-out paraphrase
(`HELDOUT_INSTRUCTIONS`, compared lower-cased without punctuation): those measure how well a policy follows
words it never trained on, and tests/test_instruction_aug.py checks it.
"""

from __future__ import annotations

PHRASINGS: dict[str, list[str]] = {
    "assembly-v3": ["[place|set|put] the ring [on|onto|over] the peg", "[move|bring] the ring to the peg"],
    "basketball-v3": ["[place|put|throw] the ball [in|into] the basket", "[get|drop] the ball in the basket"],
    "bin-picking-v3": [
        "[move|carry|bring] the block [to|into] the other bin",
        "[pick up|grab] the block and put it in the other bin",
    ],
    "box-close-v3": ["[place|set] the lid [on|onto] the box", "cover the box with the lid", "close the box"],
    "button-press-topdown-v3": [
        "[push|press] the button [from the top|from above|downward]",
        "[push|press] the top button",
        "[push|press] the button",
    ],
    "button-press-topdown-wall-v3": [
        "[push|press] the button [from the top|from above] behind the wall",
        "[push|press] the button behind the wall from above",
    ],
    "button-press-v3": ["[push|press] the button [|from the front]", "[push|press] the front button"],
    "button-press-wall-v3": ["[push|press] the button [behind|past] the wall"],
    "coffee-button-v3": [
        "[push|press] the [button on the coffee machine|coffee machine button]",
        "[turn on|switch on] the coffee machine with its button",
    ],
    "coffee-pull-v3": [
        "[pull|drag|move] the [mug|cup] away from the coffee machine",
        "[pull|take] the mug from the coffee machine",
    ],
    "coffee-push-v3": [
        "[push|slide|move] the [mug|cup] under the coffee machine",
        "[put|place] the mug below the coffee machine",
    ],
    "dial-turn-v3": ["[turn|twist] the [dial|knob]", "rotate the dial", "[turn|rotate] the dial [|around]"],
    "disassemble-v3": [
        "[take|lift|pull] the ring [off|off of] the peg",
        "[remove|take away] the ring off the peg",
        "take away the ring from the peg",
    ],
    "door-close-v3": [
        "close the door",
        "[push|swing] the door to shut it",
        "[push|swing] the door [to close it|until it closes]",
    ],
    "door-lock-v3": ["lock the door", "[turn|rotate] the door lock [to lock it|down]"],
    "door-open-v3": ["open the door", "[pull|swing] the door [to open it|until it opens]"],
    "door-unlock-v3": ["unlock the door", "[turn|rotate] the door lock [to unlock it|up]"],
    "hand-insert-v3": [
        "[put|place|push] the block [in|into] the hole",
        "insert the block into the hole",
        "move the block to the hole",
    ],
    "drawer-close-v3": [
        "close the drawer",
        "[push|slide] the drawer [in|back in]",
        "[push|slide] the drawer [in|back in|] [to close it|to shut it|until it closes]",
    ],
    "drawer-open-v3": [
        "open [|up] the drawer",
        "[pull|slide] the drawer [outward|toward you]",
        "[pull|slide] the drawer [outward|toward you|] [to open it|until it opens]",
    ],
    "faucet-open-v3": [
        "turn [on the faucet|the tap on|the faucet on]",
        "switch on the [tap|faucet]",
        "[open|start] the faucet",
        "[turn|rotate] the faucet handle [on|to turn it on]",
    ],
    "faucet-close-v3": [
        "turn [off the faucet|off the tap|the tap off|the faucet off]",
        "switch off the [tap|faucet]",
        "[close|stop] the faucet",
        "[turn|rotate] the faucet handle [off|to turn it off]",
    ],
    "hammer-v3": [
        "[hammer|drive|knock] the nail into the wall",
        "hit the nail [with the hammer|into the wall]",
    ],
    "handle-press-side-v3": [
        "[press|push] the handle down from the side",
        "press the side handle down",
    ],
    "handle-press-v3": ["press the handle down", "[press|push] down the handle"],
    "handle-pull-side-v3": ["[pull|lift] the handle up from the side", "[pull|lift] up the side handle"],
    "handle-pull-v3": ["pull the handle up", "[pull|lift] up the handle"],
    "lever-pull-v3": ["[pull|raise] the lever up", "[pull|lift] up the lever"],
    "pick-place-wall-v3": [
        "[pick up|grab] the puck and [place|put] it at the goal behind the wall",
        "[place|put] the puck on the goal behind the wall",
    ],
    "pick-out-of-hole-v3": ["[pick|lift] the puck out of the hole", "get the puck out of the hole"],
    "pick-place-v3": [
        "[pick up|grab|grasp] the puck and [place|put] it [at|on] the goal",
        "[place|put] the puck at the goal",
    ],
    "plate-slide-v3": ["[slide|push|move] the plate into the goal", "[slide|push] the plate to the goal"],
    "plate-slide-side-v3": [
        "[slide|push|move] the plate sideways into the goal",
        "[slide|push] the plate in from the side",
    ],
    "plate-slide-back-v3": [
        "[slide|pull|move] the plate back out of the goal",
        "[pull|slide] the plate out of the goal",
    ],
    "plate-slide-back-side-v3": [
        "[slide|pull|move] the plate sideways out of the goal",
        "[pull|slide] the plate out of the goal to the side",
    ],
    "peg-insert-side-v3": [
        "[insert|put|push] the peg into the hole from the side",
        "[insert|put] the peg sideways",
    ],
    "peg-unplug-side-v3": ["[unplug|pull out|remove] the peg from the side", "[unplug|pull out] the peg"],
    "soccer-v3": ["[push|kick|move] the ball into the goal", "[push|kick] the ball to the goal"],
    "stick-push-v3": [
        "[push|move] the bottle [with|using] the stick",
        "[grab|take] the stick and push the bottle",
    ],
    "stick-pull-v3": [
        "[pull|drag] the bottle [with|using] the stick",
        "[grab|take] the stick and pull the bottle",
    ],
    "push-v3": ["[push|slide|move] the puck to the goal", "[push|move] the puck onto the goal"],
    "push-wall-v3": [
        "[push|slide|move] the puck around the wall to the goal",
        "[push|move] the puck to the goal around the wall",
    ],
    "push-back-v3": ["[pull|drag|move] the puck back to the goal", "[pull|move] the puck to the goal"],
    "reach-v3": ["[reach|go to|move to] the goal", "reach [for|toward] the goal"],
    "reach-wall-v3": ["[reach|go to|move to] the goal behind the wall", "reach over the wall to the goal"],
    "shelf-place-v3": ["[put|place|set] the block [on|onto] the shelf", "[move|lift] the block to the shelf"],
    "sweep-into-v3": ["[sweep|push|move] the block into the hole", "sweep the block to the hole"],
    "sweep-v3": ["[sweep|push|move] the block off the table", "sweep the block off"],
    "window-open-v3": [
        "open the window",
        "[slide|push] the window to open it",
        "[slide|push] the window until it opens",
    ],
    "window-close-v3": [
        "[close|shut] the window",
        "[slide|push] the window [to close it|until it closes]",
    ],
}
