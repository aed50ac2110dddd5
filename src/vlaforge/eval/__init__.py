"""Evaluation in simulation: Meta-World rollouts, Wilson intervals, eval_info.json, the HTML report,
the expert / random baselines and `vlaforge demo`.

    from vlaforge.eval.run import EvalConfig, evaluate
    result = evaluate(EvalConfig(policy="runs/mt10/last", tasks="mt10", episodes=10, out="evals/mt10"))
    print(result.table())  # per task, per difficulty group, overall; report at result.report_path
"""
