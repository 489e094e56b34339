"""The COCO ↔ OpenImages class correspondence used by OpenImage-MINI (D3SSL, Sec. 5.1).

Each of COCO's 80 categories maps to one OpenImages (V4–V7) *boxable* class: its display name and MID as written in
``class-descriptions-boxable.csv``. ``exact`` is True when the OpenImages class denotes the same objects, possibly under
another name ("donut" → "Doughnut", "tv" → "Television"); False where OpenImages has no such class and the closest
boxable class stands in (the comment on each such row says why). All 80 targets are distinct boxable classes.

Not modelled: OpenImages' hierarchy. For example COCO "person" maps to "Person" only, although OpenImages also boxes
people as "Man", "Woman", "Boy" and "Girl"; those boxes count as non-shared classes (no cap), as in a by-name match.
"""

from __future__ import annotations

from typing import NamedTuple


class ClassMatch(NamedTuple):
    coco: str  # COCO 2017 category name
    openimages: str  # OpenImages boxable display name
    mid: str  # OpenImages label MID (the ``LabelName`` column of the box CSVs)
    exact: bool  # True when the names denote the same class; False for a closest match


COCO_TO_OPENIMAGES: tuple[ClassMatch, ...] = (
    ClassMatch("person", "Person", "/m/01g317", True),
    ClassMatch("bicycle", "Bicycle", "/m/0199g", True),
    ClassMatch("car", "Car", "/m/0k4j", True),
    ClassMatch("motorcycle", "Motorcycle", "/m/04_sv", True),
    ClassMatch("airplane", "Airplane", "/m/0cmf2", True),
    ClassMatch("bus", "Bus", "/m/01bjv", True),
    ClassMatch("train", "Train", "/m/07jdr", True),
    ClassMatch("truck", "Truck", "/m/07r04", True),
    ClassMatch("boat", "Boat", "/m/019jd", True),
    ClassMatch("traffic light", "Traffic light", "/m/015qff", True),
    ClassMatch("fire hydrant", "Fire hydrant", "/m/01pns0", True),
    ClassMatch("stop sign", "Stop sign", "/m/02pv19", True),
    ClassMatch("parking meter", "Parking meter", "/m/015qbp", True),
    ClassMatch("bench", "Bench", "/m/0cvnqh", True),
    ClassMatch("bird", "Bird", "/m/015p6", True),
    ClassMatch("cat", "Cat", "/m/01yrx", True),
    ClassMatch("dog", "Dog", "/m/0bt9lr", True),
    ClassMatch("horse", "Horse", "/m/03k3r", True),
    ClassMatch("sheep", "Sheep", "/m/07bgp", True),
    ClassMatch("cow", "Cattle", "/m/01xq0k1", False),  # no "Cow"; "Cattle" is the bovine class ("Bull" is separate)
    ClassMatch("elephant", "Elephant", "/m/0bwd_0j", True),
    ClassMatch("bear", "Bear", "/m/01dws", True),
    ClassMatch("zebra", "Zebra", "/m/0898b", True),
    ClassMatch("giraffe", "Giraffe", "/m/03bk1", True),
    ClassMatch("backpack", "Backpack", "/m/01940j", True),
    ClassMatch("umbrella", "Umbrella", "/m/0hnnb", True),
    ClassMatch("handbag", "Handbag", "/m/080hkjn", True),
    ClassMatch("tie", "Tie", "/m/01rkbr", True),
    ClassMatch("suitcase", "Suitcase", "/m/01s55n", True),
    ClassMatch("frisbee", "Flying disc", "/m/02wmf", True),  # OpenImages' generic name for a frisbee
    ClassMatch("skis", "Ski", "/m/071p9", True),  # singular name, same class
    ClassMatch("snowboard", "Snowboard", "/m/06__v", True),
    ClassMatch("sports ball", "Ball", "/m/018xm", False),  # generic "Ball"; Football, Tennis ball... are separate
    ClassMatch("kite", "Kite", "/m/02zt3", True),
    ClassMatch("baseball bat", "Baseball bat", "/m/03g8mr", True),
    ClassMatch("baseball glove", "Baseball glove", "/m/03grzl", True),
    ClassMatch("skateboard", "Skateboard", "/m/06_fw", True),
    ClassMatch("surfboard", "Surfboard", "/m/019w40", True),
    ClassMatch("tennis racket", "Tennis racket", "/m/0h8my_4", True),
    ClassMatch("bottle", "Bottle", "/m/04dr76w", True),
    ClassMatch("wine glass", "Wine glass", "/m/09tvcd", True),
    ClassMatch("cup", "Coffee cup", "/m/02p5f1q", False),  # no generic "Cup"; "Mug" (/m/02jvh9) is the other option
    ClassMatch("fork", "Fork", "/m/0dt3t", True),
    ClassMatch("knife", "Knife", "/m/04ctx", True),
    ClassMatch("spoon", "Spoon", "/m/0cmx8", True),
    ClassMatch("bowl", "Bowl", "/m/04kkgm", True),
    ClassMatch("banana", "Banana", "/m/09qck", True),
    ClassMatch("apple", "Apple", "/m/014j1m", True),
    ClassMatch("sandwich", "Sandwich", "/m/0l515", True),
    ClassMatch("orange", "Orange", "/m/0cyhj_", True),
    ClassMatch("broccoli", "Broccoli", "/m/0hkxq", True),
    ClassMatch("carrot", "Carrot", "/m/0fj52s", True),
    ClassMatch("hot dog", "Hot dog", "/m/01b9xk", True),
    ClassMatch("pizza", "Pizza", "/m/0663v", True),
    ClassMatch("donut", "Doughnut", "/m/0jy4k", True),  # spelling only
    ClassMatch("cake", "Cake", "/m/0fszt", True),
    ClassMatch("chair", "Chair", "/m/01mzpv", True),
    ClassMatch("couch", "Couch", "/m/02crq1", True),
    ClassMatch("potted plant", "Houseplant", "/m/03fp41", False),  # "Flowerpot" boxes the pot, not the plant
    ClassMatch("bed", "Bed", "/m/03ssj5", True),
    # "Kitchen & dining room table" (/m/0h8n5zk) is narrower and rarely boxed; COCO's class covers most tables.
    ClassMatch("dining table", "Table", "/m/04bcr3", False),
    ClassMatch("toilet", "Toilet", "/m/09g1w", True),
    ClassMatch("tv", "Television", "/m/07c52", True),
    ClassMatch("laptop", "Laptop", "/m/01c648", True),
    ClassMatch("mouse", "Computer mouse", "/m/020lf", True),  # not "Mouse" (/m/04rmv), the animal
    ClassMatch("remote", "Remote control", "/m/0qjjc", True),
    ClassMatch("keyboard", "Computer keyboard", "/m/01m2v", True),  # COCO's keyboard is the computer one
    ClassMatch("cell phone", "Mobile phone", "/m/050k8", True),
    ClassMatch("microwave", "Microwave oven", "/m/0fx9l", True),
    ClassMatch("oven", "Oven", "/m/029bxz", True),
    ClassMatch("toaster", "Toaster", "/m/01k6s3", True),
    ClassMatch("sink", "Sink", "/m/0130jx", True),
    ClassMatch("refrigerator", "Refrigerator", "/m/040b_t", True),
    ClassMatch("book", "Book", "/m/0bt_c3", True),
    ClassMatch("clock", "Clock", "/m/01x3z", True),
    ClassMatch("vase", "Vase", "/m/02s195", True),
    ClassMatch("scissors", "Scissors", "/m/01lsmm", True),
    ClassMatch("teddy bear", "Teddy bear", "/m/0kmg4", True),
    ClassMatch("hair drier", "Hair dryer", "/m/03wvsk", True),
    ClassMatch("toothbrush", "Toothbrush", "/m/012xff", True),
)

BY_COCO_NAME: dict[str, ClassMatch] = {m.coco: m for m in COCO_TO_OPENIMAGES}
BY_MID: dict[str, ClassMatch] = {m.mid: m for m in COCO_TO_OPENIMAGES}
