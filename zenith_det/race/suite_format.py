"""A race's suite file: the arms, the seeds, and what is declared before anything runs.

    title: ...
    mode: iterations          # every run trains its config's SOLVER.MAX_ITER (equal iterations), or
                              # wall_clock: every run gets budget_hours of SOLVER.MAX_TIME_HOURS
    budget_hours: 0.05        # wall_clock only
    eval_minutes: 0.5         # wall_clock only: evaluate every this many minutes
    seeds: 40                 # the comparison seeds: a list, or N for 0 .. N-1; the same for every arm
    summaries: ../../../docs/race/cpu   # one small json per finished run (race.run_summary), beside the report
    reference: zenith         # the arm the paired differences are taken against
    set: {MODEL.DEVICE: cuda} # optional: overrides for every run, before each arm's own
    tuning:                   # the lr tuning stage: each `lr: {tune: [...]}` arm trains every point of
      seeds: [100, 101]       # its grid on these seeds (never comparison seeds), and the best mean
      grid_size: 4            # primary metric is its lr for the comparison; every grid has this size
      extend_at_edge: 2       # optional (default 0): a best mean at an edge of the grid adds the next
                              # point beyond it (the grid's factor there), up to this many per arm
      amended: "..."          # optional: when and why the tuning rule changed after runs began
    preregistration:
      primary_metric: bbox/AP
      alpha: 0.05
      correction: holm        # within each claim's family of comparisons
      margins: {eta0: 3.0, W: 3.0}     # equivalence margins (TOST), in primary-metric points
      start_default: partial  # kept unless another start-up choice wins beyond the noise
      flatness_max_lr_ratio: 2.0       # flatness is compared only between final step sizes this close
      weight_decay_min_shrink: 0.05    # decay that shrinks weights less than this cannot be seen
    power:
      target: 0.8
      effect: 3.0             # the smallest difference the superiority tests are powered to see
      paired_sd:              # planning SDs of paired differences: {sd: x} or from 95% intervals
        hand-made: {intervals: [[-18.8, 10.7]], n: 3, source: "..."}
      families: {main: hand-made}      # group -> the planning SD its tests are sized with
      unpowered: {automatic: "why"}    # groups run without a power calculation, and why
    sharpness: {arms: [zenith, sgd_multistep], seeds: 5, batches: 2, max_iters: 100, tol: 0.02}
    arms:
      - name: zenith          # its folder: <out>/<name>/seed<k>/
        config: ../zenith.yaml  # relative to the suite file; a config with _BASE_
        label: ZENITH
        group: main           # main | automatic | start | eta0 | W | weight decay
        seeds: 20             # optional: the suite's first N seeds (or a list of them)
        lr: {tune: [0.01, 0.02, 0.04, 0.08]}   # or {from: zenith, times: 0.5}, {fixed: 1.0, why: ...},
                                                # {none: why}: how this arm's lr is chosen
        set: {SOLVER.ZENITH.START: full}       # optional overrides on top of the config

Every field is checked when the file is read (race.suite_loading.load_suite): a bad
or missing declaration is a one-line UserError naming the suite file and the field.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

MODES = ("iterations", "wall_clock")
GROUPS = ("main", "automatic", "start", "eta0", "W", "weight decay")
EQUIVALENCE_GROUPS = ("eta0", "W")  # "insensitive to ...": equivalence tests with a declared margin
METRIC_NAMES = {"bbox/AP": "box AP", "bbox/AP50": "box AP50", "segm/AP": "mask AP", "segm/AP50": "mask AP50"}
METRICS = tuple(METRIC_NAMES)
STARTS = ("partial", "full", "after_warmup")  # SOLVER.ZENITH.START
CORRECTIONS = ("holm",)
LR_KINDS = ("tune", "from", "fixed", "none")


@dataclasses.dataclass(frozen=True)
class LrChoice:
    """How an arm's SOLVER.BASE_LR is chosen: tuned over `grid`, taken from arm `source`'s
    choice times `times`, `fixed` at `value`, or `none` (the method has no lr)."""
    kind: str
    grid: Tuple[float, ...] = ()
    value: Optional[float] = None
    source: Optional[str] = None
    times: float = 1.0
    why: str = ""

    def describe(self, labels: Dict[str, str], tuning_seeds: Sequence[int] = ()) -> str:
        if self.kind == "tune":
            return (f"tuned: the best mean of {len(self.grid)} lrs ({', '.join(f'{v:g}' for v in self.grid)}) "
                    f"on tuning seeds {', '.join(map(str, tuning_seeds))}")
        if self.kind == "from":
            times = "" if self.times == 1 else f"{self.times:g} x "
            return f"{times}the lr chosen for {labels.get(self.source, self.source)}"
        if self.kind == "fixed":
            return f"fixed at {self.value:g}: {self.why}"
        return f"none: {self.why}"


@dataclasses.dataclass
class Arm:
    name: str
    config: str
    label: str
    group: str
    seeds: List[int]
    overrides: Dict[str, object]
    lr: LrChoice = LrChoice("none", why="not declared")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: an arm at a seed, in the tuning stage (at grid point `lr`) or the comparison."""
    arm: str
    seed: int
    stage: str = "compare"  # "tune" | "compare"
    lr: Optional[float] = None  # the tuning stage's grid point

    @property
    def key(self) -> str:
        """Its folder under the race's output and under the summaries: arm/seed3, arm/tune-lr0.01/seed100."""
        if self.stage == "tune":
            return f"{self.arm}/tune-lr{self.lr:g}/seed{self.seed}"
        return f"{self.arm}/seed{self.seed}"

    def describe(self, labels: Dict[str, str]) -> str:
        where = f" (tuning, lr {self.lr:g})" if self.stage == "tune" else ""
        return f"{labels.get(self.arm, self.arm)} seed {self.seed}{where}"


@dataclasses.dataclass
class Preregistration:
    primary_metric: str
    alpha: float
    correction: str
    margins: Dict[str, float]
    start_default: Optional[str]
    flatness_max_lr_ratio: float
    weight_decay_min_shrink: float


@dataclasses.dataclass
class PlanningSd:
    name: str
    sd: float
    intervals: Tuple[Tuple[float, float], ...] = ()
    n: int = 0
    source: str = ""


@dataclasses.dataclass
class PowerPlan:
    target: float
    effect: float
    paired_sd: Dict[str, PlanningSd]
    families: Dict[str, str]
    unpowered: Dict[str, str]


@dataclasses.dataclass
class Tuning:
    seeds: List[int]
    grid_size: int
    extend_at_edge: int = 0  # points an arm may add beyond an edge its best mean lies at
    amended: Optional[str] = None  # a change to the rule made after runs began, and why


def extend_grid(grid: Sequence[float], low: bool) -> List[float]:
    """`grid` (ascending) with the next point beyond its low or high edge, one step of the
    grid's own factor at that edge (0.01, 0.02, ... -> 0.005, 0.01, 0.02, ...)."""
    grid = list(grid)
    if low:
        return [grid[0] / (grid[1] / grid[0])] + grid
    return grid + [grid[-1] * (grid[-1] / grid[-2])]


@dataclasses.dataclass
class SharpnessPlan:
    arms: Tuple[str, ...] = ()
    seeds: Dict[str, List[int]] = dataclasses.field(default_factory=dict)  # arm -> seeds probed
    batches: int = 2
    max_iters: int = 100
    tol: float = 0.02


@dataclasses.dataclass
class Suite:
    path: str
    title: str
    mode: str
    seeds: List[int]
    reference: str
    arms: List[Arm]
    budget_hours: float = 0.0
    eval_minutes: float = 0.0
    sharpness: SharpnessPlan = dataclasses.field(default_factory=SharpnessPlan)
    common: Dict[str, object] = dataclasses.field(default_factory=dict)
    prereg: Optional[Preregistration] = None
    power: Optional[PowerPlan] = None
    tuning: Optional[Tuning] = None
    summaries: Optional[str] = None  # absolute path, or None: <out>/summaries

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @property
    def labels(self) -> Dict[str, str]:
        return {a.name: a.label for a in self.arms}

    def group(self, group: str) -> List[Arm]:
        return [a for a in self.arms if a.group == group]

    def runs(self) -> List[Tuple[Arm, int]]:
        """The comparison's (arm, seed) in seed-major order: every arm's first seed before any
        arm's second, so a race cut short still has paired runs."""
        seeds = sorted({s for a in self.arms for s in a.seeds}, key=self.seeds.index)
        return [(a, s) for s in seeds for a in self.arms if s in a.seeds]

    def tuning_runs(self) -> List[Run]:
        """Every tuned arm at every point of its declared grid on every tuning seed, seed-major
        (the points the edge rule adds come later: `edge_runs`)."""
        tuned = [a for a in self.arms if a.lr.kind == "tune"]
        if not tuned or self.tuning is None:
            return []
        return [Run(a.name, s, "tune", a.lr.grid[i]) for s in self.tuning.seeds for i in range(self.tuning.grid_size)
                for a in tuned]

    def edge_runs(self) -> List[Run]:
        """Every run the edge rule could add: each tuned arm's points beyond either edge of
        its grid, up to `tuning.extend_at_edge` on each side, on the tuning seeds."""
        if self.tuning is None or not self.tuning.extend_at_edge:
            return []
        runs = []
        for a in self.arms:
            if a.lr.kind != "tune":
                continue
            for low in (True, False):
                grid = sorted(a.lr.grid)
                for _ in range(self.tuning.extend_at_edge):
                    grid = extend_grid(grid, low)
                    runs += [Run(a.name, s, "tune", grid[0] if low else grid[-1]) for s in self.tuning.seeds]
        return runs

    def compare_runs(self) -> List[Run]:
        return [Run(a.name, s) for a, s in self.runs()]

    def all_runs(self) -> List[Run]:
        """Every run the suite declares, in the order they train: the tuning stage, then the comparison."""
        return self.tuning_runs() + self.compare_runs()
