"""`hydra/sweeper=harness`: the Hydra adapter of the sweep engine (harness.sweep.engine).

It hands the engine Hydra's config loader (to compose each trial) and launcher (to run
them), keeps the sweep folder in Hydra's config, and turns the harness's errors into Hydra's
compact ones. The sweep loop itself is the engine's, or the device pool's
(harness.sweep.pool) with `hydra.sweeper.devices_per_trial` on one node. (No `from __future__
import annotations`: see config.py.)
"""

import functools
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class SweepError(CompactHydraException):
    """Stops the sweep; Hydra prints the message without a traceback."""


class HarnessSweeper(Sweeper):
    def __init__(self, **settings):
        self.values = settings  # hydra.sweeper.* (harness.sweep.settings.Settings)
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.config_loader = hydra_context.config_loader
        # paths.* interpolate ${hydra:runtime.cwd}: resolvable in this process only with this set
        HydraConfig.instance().set_config(config)
        self._fit_slurm_launcher(config)  # before the launcher reads its settings
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _fit_slurm_launcher(self, config: DictConfig) -> None:
        """hydra.sweeper.devices_per_trial on SLURM: each job asks for its GPUs (pool.py)."""
        from harness.config.errors import ConfigError, HarnessError
        from harness.sweep.engine import settings_from
        from harness.sweep.pool import is_slurm, slurm_resources

        try:
            settings = settings_from(self.values)
            if not settings.devices_per_trial or not is_slurm(config.hydra.launcher._target_):
                return
            if settings.trials_per_device != 1:
                raise ConfigError(f"hydra.sweeper.trials_per_device={settings.trials_per_device}"
                                  ": shares the GPUs of one node (the device pool); on SLURM "
                                  "each job gets its own GPUs")
            user_set = {o.lstrip("+~").split("=", 1)[0].removeprefix("hydra.launcher.")
                        for o in config.hydra.overrides.hydra}
            changes = slurm_resources(settings.devices_per_trial, settings.workers,
                                      config.hydra.launcher, user_set)
        except HarnessError as exc:
            raise SweepError(str(exc)) from exc
        with read_write(config.hydra), open_dict(config.hydra.launcher):
            for key, value in changes.items():
                config.hydra.launcher[key] = value
        launcher = config.hydra.launcher
        log.info("hydra.sweeper.devices_per_trial=%d on SLURM: %s per %s job%s",
                 settings.devices_per_trial, ", ".join(
                     f"{key}={launcher[key]}" for key in
                     ("tasks_per_node", "gpus_per_task", "gpus_per_node")),
                 "worker" if settings.workers > 0 else "trial",
                 f" (set: {', '.join(changes)})" if changes else "")

    def sweep(self, arguments: list[str]) -> list:
        from harness.config.errors import HarnessError

        try:
            self._sweep(arguments)
        except HarnessError as exc:  # a setting the user can fix: one line, no traceback
            raise SweepError(str(exc)) from exc
        return []

    def _sweep(self, arguments: list[str]) -> None:
        from harness.sweep.engine import Engine, settings_from
        from harness.sweep.pool import run_pool, spawn_trial
        from harness.sweep.space import build_space, describe, validate_space
        from harness.sweep.study import check_objectives, default_storage, n_counted
        from harness.sweep.workers import run_workers

        settings = settings_from(self.values)
        pool = self._device_pool(settings)
        parser = OverridesParser.create(config_loader=self.config_loader)
        space, passthrough = build_space(settings.params, arguments, parser.parse_overrides)
        validate_space(space, self.config, self.config_loader.get_group_options)
        name = Engine.name(settings, space, passthrough)
        sweep_dir = self._set_sweep_dir(name)
        output_dir = str(Path(self.config.paths.output_dir).resolve())
        storage = settings.storage or default_storage(output_dir, name)
        engine = Engine(settings, self.compose, output_dir, sweep_dir, storage)
        check_objectives(engine.objectives, self.config.eval.tasks if "eval" in self.config else [])
        study = engine.open(name, space)
        n_trials = engine.n_trials(space)
        log.info("study %s (%s): %d trials in total, %d already counted; %s\n  %s",
                 name, storage, n_trials, n_counted(study),
                 f"device pool of {pool.slots} slots" if pool is not None
                 else f"{settings.workers} asynchronous workers" if settings.workers > 0
                 else f"batches of {settings.n_jobs}",
                 "\n  ".join(describe(space) or ["(no parameters)"]))
        if pool is not None:
            start = functools.partial(spawn_trial, config_name=self.config.hydra.job.config_name,
                                      sweep_dir=sweep_dir)
            run_pool(engine, space, passthrough, n_trials, pool, start)
        elif settings.workers > 0:
            run_workers(engine, arguments, passthrough, n_trials, self.launch)
        else:
            engine.run_batches(space, passthrough, n_trials, self.launch)
        engine.finish()

    def _device_pool(self, settings):
        """The device pool of this node when devices_per_trial asks for one (not on SLURM)."""
        from harness.config.errors import ConfigError
        from harness.sweep.pool import DevicePool, is_slurm, visible_devices

        k = settings.devices_per_trial
        if k == 0 or is_slurm(self.config.hydra.launcher._target_):
            return None
        if settings.workers > 0:
            raise ConfigError(
                f"hydra.sweeper.devices_per_trial={k} with hydra.sweeper.workers="
                f"{settings.workers}: on one node the device pool already runs trials "
                "asynchronously, one per free device group; workers are SLURM worker jobs "
                "(hydra/launcher=slurm). Drop hydra.sweeper.workers")
        pool = DevicePool(visible_devices(), k, settings.trials_per_device)
        log.info("device pool: %d trial(s) at once on %s (the launcher and n_jobs are not "
                 "used: each trial is a process of this node)", pool.slots,
                 " ".join(",".join(g) for g in pool.groups))
        return pool

    def compose(self, overrides: list[str]) -> DictConfig:
        return self.config_loader.load_sweep_config(self.config, list(overrides))

    def launch(self, jobs: list[list[str]], first: int) -> list:
        """Runs the jobs with the configured Hydra launcher; one JobEnd each."""
        from harness.sweep.engine import JobEnd

        ends = []
        for ret in self.launcher.launch(jobs, initial_job_idx=first):
            if ret.status == JobStatus.FAILED:
                try:
                    ret.return_value  # noqa: B018 -- raises the job's exception
                except Exception as exc:
                    ends.append(JobEnd(error=f"{type(exc).__name__}: {exc}"))
                    continue
            ends.append(JobEnd(returned=ret.return_value
                               if ret.status == JobStatus.COMPLETED else None))
        return ends

    def _set_sweep_dir(self, name: str) -> Path:
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            self.config.hydra.sweeper.study_name = name
            sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
            self.config.hydra.sweep.dir = str(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return sweep_dir
