"""The protocol floor for the serving benchmark: a trivial v2 model that returns a constant.

It runs on the same server as the ranker (serving.server.ShoprankModelServer, same REST path, same options),
answers the same request bodies, and returns outputs of the same names, types and sizes as a ranking response
(`scores` FP32 [N], `ranking` BYTES [N]) without looking at the inputs. So the gap between it and the real
model is what the transform, the model and the batching add on top of the protocol's own cost.

    python -m benchmarks.serving_floor --model_name floor --http_port 8090 [--workers 2] [--fast_infer false]
"""

from __future__ import annotations

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serving.logs import configure_logging
from serving.options import build_parser, server_kwargs
from serving.server import ShoprankModelServer


class ConstantModel(Model):
    def __init__(self, name: str, rows: int = 100):
        super().__init__(name)
        self.rows = rows
        self.scores = np.linspace(1, 0, rows, dtype=np.float32).tolist()
        self.ranking = [f"i{i:07d}" for i in range(rows)]
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse:
        outputs = [InferOutput("scores", [self.rows], "FP32", data=self.scores),
                   InferOutput("ranking", [self.rows], "BYTES", data=self.ranking)]
        return InferResponse(response_id=payload.id or "floor", model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = build_parser("protocol floor: a constant v2 model on the shoprank ModelServer")
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    configure_logging(access_log=args.access_log, trace_log=args.enable_latency_logging)
    ShoprankModelServer(**server_kwargs(args)).start([ConstantModel(args.model_name, args.rows)])


if __name__ == "__main__":
    main()
