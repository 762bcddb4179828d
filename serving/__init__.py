"""shoprank serving: the KServe v2 model server (`python -m serving`) and transformer
(`python -m serving.transformer`) for the promoted ranker bundle.

Layout, by concern (as in KServe's python/kserve/kserve):
    codec.py        v2 tensors <-> ranking / tensor requests, validation, responses
    batcher.py      the micro-batcher
    model.py        ShoprankModel, the kserve.Model (local LiteRT / SavedModel scoring)
    transformer.py  ShoprankTransformer: same path, scores from a separate v2 predictor
    rest.py         the lean v2 REST infer path (orjson, binary tensor extension)
    server.py       ShoprankModelServer: KServe's ModelServer with readiness and REST adjustments
    options.py      command-line options on top of KServe's parser
    logs.py         logging settings
    __main__.py     the server entry point
"""
