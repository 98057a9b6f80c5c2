"""Learning-rate schedules (`schedule=...`): their factors against torch.optim.lr_scheduler's, every
rule taking each epoch's learning rate, every engine the same steps as NumPy (batched and with
mini-batches too), the metric `lr`, bad input refused."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from conftest import backend_params, built

from runner.descent import optimizers, schedules
from runner.descent.loop import descend
from runner.engines.numpy import OPS
from runner.errors import ConfigError

SCHEDULES = {  # each schedule, its parameters set so that all of them act within 12 epochs
    "constant": (),
    "step": ("schedule.every=4", "schedule.factor=0.5"),
    "cosine": ("schedule.floor=0.1",),
    "warmup": ("schedule.warmup=5", "schedule.start=0.2"),
    "wsd": ("schedule.warmup=3", "schedule.start=0.2", "schedule.decay=4", "schedule.floor=0.05"),
    "ramp": ("schedule.start=0.1", "schedule.end=2", "schedule.spacing=geometric"),
}


def test_the_factors_are_torchs_schedulers():
    epochs, lr = 12, 0.3

    def torchs(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        scheduler, rates = make(optimizer), []
        for _ in range(epochs + 1):
            rates.append(optimizer.param_groups[0]["lr"] / lr)
            optimizer.step()
            scheduler.step()
        return rates

    ours = {name: schedules.Schedule(name, epochs, parameters).factors(0, epochs + 1)[:, 0] for name, parameters in [
        ("step", {"every": 4, "factor": 0.5}), ("cosine", {"floor": 0.1}), ("warmup", {"warmup": 5, "start": 0.2})]}
    sched = torch.optim.lr_scheduler
    np.testing.assert_allclose(ours["step"], torchs(lambda o: sched.StepLR(o, step_size=4, gamma=0.5)), rtol=1e-12)
    np.testing.assert_allclose(ours["cosine"], torchs(lambda o: sched.CosineAnnealingLR(o, T_max=epochs,
                                                                                        eta_min=0.1 * lr)), rtol=1e-12)
    np.testing.assert_allclose(ours["warmup"], torchs(lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=5)),
                               rtol=1e-12)
    wsd = schedules.Schedule("wsd", 12, {"warmup": 3, "start": 0.2, "decay": 4, "floor": 0.05}).factors(0, 13)[:, 0]
    np.testing.assert_allclose(wsd, [0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1, 1, 1, 1, 1, 1, 1 - 0.95 / 4,
                                     1 - 0.95 / 2, 1 - 0.95 * 3 / 4, 0.05], rtol=1e-12)
    linear = schedules.Schedule("ramp", 10, {"start": 0.1, "end": 2.0}).factors(0, 11)[:, 0]
    np.testing.assert_allclose(linear, np.linspace(0.1, 2.0, 11), rtol=1e-12)


@pytest.mark.parametrize("rule", sorted(optimizers.RULES))
def test_every_rule_steps_at_the_learning_rate_it_is_given(rule):
    """A rule built at lr 0.1 and handed lr 0.025 for a step takes the step the rule built at 0.025 takes."""
    values = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "decrease": 1e-4, "shrink": 0.5}

    def built_at(lr):
        optimizer = optimizers.Optimizer(rule, lr, **{k: v for k, v in values.items()
                                                       if k in optimizers.RULES[rule][1]})
        return optimizers.rule(optimizer, OPS, objective=lambda x: np.sum(x ** 4, axis=-1),
                               minimum=np.zeros(1))

    x = np.array([[0.7, -1.3]])
    (init, update), (_, reference) = built_at(0.1), built_at(0.025)
    state = init(x)
    for _ in range(3):
        grad = 4 * x ** 3
        (x, state), (expected, _) = update(grad, state, x, lr=0.025), reference(grad, state, x)
        np.testing.assert_array_equal(x, expected)


FRAMEWORKS = ("tf", "torch", "jax")
RULES = ("sgd", "momentum", "adam", "armijo")
SCHEDULED = sorted(set(SCHEDULES) - {"constant"})  # constant: the engines' own parity tests


@pytest.mark.parametrize("backend", backend_params(FRAMEWORKS, parity=True))
@pytest.mark.parametrize("rule", RULES)
def test_every_engine_takes_the_scheduled_steps_as_numpy_does(backend, rule):
    """Every engine steps every rule at each epoch's learning rate. An engine only reads the rates
    NumPy computed (`Problem.learning_rates`), whichever the schedule, so the schedules take turns:
    each engine runs four of them and each schedule runs on two or three engines (the factors
    themselves are held to torch's above)."""
    name = SCHEDULED[(FRAMEWORKS.index(backend) * len(RULES) + RULES.index(rule)) % len(SCHEDULED)]
    overrides = ("loss=ill_conditioned", "x_start=[1,1]", f"optimizer={rule}", "lr=0.5", "epochs=12",
                 "dtype=float64", f"schedule={name}", *SCHEDULES[name])
    expected = descend(*built(*overrides))
    prob, engine, loop = built(*overrides, backend=backend)
    result = descend(prob, engine, loop)
    np.testing.assert_allclose(result.x, expected.x, rtol=1e-12, atol=1e-300, err_msg=f"{rule}, {name} on {backend}")
    lr = result.measured[:, 0, result.measure_names.index(schedules.LR)]
    np.testing.assert_allclose(lr, 0.5 * prob.schedule.factors(0, 13)[:, 0], rtol=1e-15)


def test_sgd_with_a_schedule_is_the_loop_written_by_hand():
    prob, engine, loop = built("schedule=step", "schedule.every=3", "schedule.factor=0.5", "epochs=9", "dtype=float64")
    x, path = 5.0, [5.0]
    for t in range(9):
        x = x - 0.3 * 0.5 ** (t // 3) * 2 * x
        path.append(x)
    np.testing.assert_array_equal(descend(prob, engine, loop).x[:, 0], path)


@pytest.mark.parametrize("backend", backend_params(parity=True))
def test_a_batch_of_schedules_is_each_schedule_run_alone(backend):
    batch = ("loss=ill_conditioned", "x_start=[1,1]", "optimizer=momentum", "epochs=10", "dtype=float64",
             "schedule=wsd", "schedule.decay=4", 'batch.sweep=["schedule.warmup=0,2,5","schedule.floor=0,0.5"]',
             "schedule.warmup=0", "schedule.floor=0")
    together = descend(*built(*batch, backend=backend))
    for point, (warmup, floor) in enumerate([(w, f) for w in (0, 2, 5) for f in (0, 0.5)]):
        alone = descend(*built(*batch[:6], "schedule.decay=4", f"schedule.warmup={warmup}", f"schedule.floor={floor}",
                               backend=backend))
        np.testing.assert_allclose(together.x[:, point], alone.x[:, 0], rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("backend", backend_params(FRAMEWORKS, parity=True))
def test_mini_batches_under_a_schedule_agree_with_numpy(backend):
    overrides = ("model=logistic", "data=breast_cancer", "batch_size=100", "epochs=6", "dtype=float64",
                 "optimizer=adam", "lr=0.05", "schedule=cosine")
    expected, result = descend(*built(*overrides)), descend(*built(*overrides, backend=backend))
    np.testing.assert_allclose(result.x, expected.x, rtol=1e-10, atol=1e-14)


def test_a_run_records_the_learning_rate_of_each_epoch(here, store_uri):
    import runner

    run = runner.run("schedule=cosine", "epochs=8", "lr=0.2")
    history = mlflow.MlflowClient(store_uri).get_metric_history(run.run_id, "lr")
    expected = 0.2 * (1 + np.cos(np.pi * np.arange(9) / 8)) / 2
    np.testing.assert_allclose([m.value for m in sorted(history, key=lambda m: m.step)], expected, rtol=1e-6)
    assert run.summary["final_lr"] == pytest.approx(0.0, abs=1e-9) and "best_lr" not in run.summary
    assert run.params["schedule"] == "cosine" and float(run.params["schedule.floor"]) == 0.0


@pytest.mark.parametrize("overrides, message", [
    (["schedule=warmup", "schedule.warmup=20"], "schedule.warmup=20 is not allowed: at most epochs=15, the run's length"),
    (["schedule=wsd", "schedule.decay=-1"], "schedule.decay=-1.0 is not allowed: schedule.decay must be a number of "
                                            "epochs >= 0"),
    (["schedule=wsd", "schedule.warmup=10", "schedule.decay=10"],
     "schedule.warmup + schedule.decay is more than epochs=15"),
    (["schedule=step", "schedule.factor=0"], "schedule.factor=0.0 is not allowed: schedule.factor must be a finite "
                                             "number > 0"),
    (["schedule=step", "schedule.every=0.5"], "schedule.every=0.5 is not allowed"),
    (["schedule=cosine", "schedule.floor=2"], "schedule.floor=2.0 is not allowed: schedule.floor must be in [0, 1]"),
    (["schedule=ramp", "schedule.spacing=cubic"], "schedule.spacing=cubic is not allowed: linear|geometric"),
    (["schedule=step", "schedule.every=null"], "schedule=step needs schedule.every: a number of epochs >= 1"),
])
def test_bad_schedule_input_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        built(*overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_the_lr_range_test_on_y_equals_x_squared_rises_at_theorys_bound(here, store_uri):
    """experiment=lr_range_test as it ships: the loss of y = x^2 falls fastest within one ramp step
    of lr = 1/2 (one step lands on the minimum) and starts to rise at the first lr past 1 = 2/L."""
    import runner

    run = runner.run("experiment=lr_range_test")
    step = 1e5 ** (1 / 400)  # the ramp's ratio from one epoch to the next
    assert 1.0 < run.summary["lr_blowup"] <= step
    assert 0.5 / step <= run.summary["lr_suggested"] <= 0.5 * step
    assert run.summary["final_lr"] > 1 and run.outcome == "diverged"  # it ran past the bound, and blew up
    model = runner.run("experiment=lr_range_test", "model=mlp", "data=diabetes", "model.hidden=[16]", "epochs=200")
    assert model.summary["lr_suggested"] < model.summary["lr_blowup"] < 10


BATCHED = {"step": "schedule.factor=0.5,0.8", "cosine": "schedule.floor=0,0.3", "warmup": "schedule.start=0.1,0.5",
           "wsd": "schedule.decay=2,5", "ramp": "schedule.end=1,3"}


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_each_schedules_parameters_batch(name):
    key, values = BATCHED[name].split("=")
    common = ("loss=quadratic", "optimizer=adam", "lr=0.2", "epochs=12", "dtype=float64", f"schedule={name}",
              *(o for o in SCHEDULES[name] if not o.startswith(key)))
    together = descend(*built(*common, f'batch.sweep=["{BATCHED[name]}"]', f"{key}={values.split(',')[0]}"))
    for point, value in enumerate(values.split(",")):
        alone = descend(*built(*common, f"{key}={value}"))
        np.testing.assert_array_equal(together.x[:, point], alone.x[:, 0])
        lr = schedules.LR
        np.testing.assert_array_equal(together.measured[:, point, together.measure_names.index(lr)],
                                      alone.measured[:, 0, alone.measure_names.index(lr)])
