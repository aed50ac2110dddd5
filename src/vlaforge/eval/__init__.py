"""Evaluation in simulation: Meta-World rollouts, Wilson intervals, eval_info.json, the HTML report and
the expert / random baselines. It depends on the model and the environments, never on training
(`vlaforge.demo` is the orchestrator above both).

    from vlaforge.eval.run import EvalConfig, evaluate
    result = evaluate(EvalConfig(policy="runs/mt10/last", tasks="mt10", episodes=10, out="evals/mt10"))
    print(result.table())  # per task, per difficulty group, overall; report at result.report_path
"""
