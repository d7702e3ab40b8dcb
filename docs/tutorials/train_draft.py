import time; t0=time.time()
import gatezoo as gz
config = gz.TrainConfig(cell="vector", task="adding", seq_len=20, hidden=32, optimizer="adam",
                        learning_rate=1e-2, steps=200, batch_size=32, seeds=(0, 1),
                        eval_every=100, instruments=("gates", "lags", "effective_lr"))
result = gz.train(config, progress=False)
print(result.final_loss, result.final_eval, result.wall_time)
print(len(result.history)); print(result.history[-1].keys())
last = [l for l in result.history if l.get("split")=="train"][-1]
print({k: v for k, v in last.items() if k.startswith("gates/")})
print(time.time()-t0)
