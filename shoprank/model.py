"""The ranking model (tf_keras functional) and its SavedModel export."""

from __future__ import annotations

import json
from pathlib import Path

from shoprank._tf import keras, tf
from shoprank.config import FeatureConfig, ModelConfig
from shoprank.signature import SCORE, SIGNATURE, input_shapes  # noqa: F401 (re-exported)
from shoprank.transform import INPUTS

L = keras.layers


def build_model(sizes: dict[str, int], mc: ModelConfig, fc: FeatureConfig) -> keras.Model:
    """Query and title Conv towers over a shared token embedding, a Conv over the behaviour sequence
    (item + category + brand embeddings, shared with the candidate's), id/category/brand/price
    embeddings, two dot-product interactions, and an MLP head.

    The dot products (query.title, history.candidate) feed the head beside the towers because an MLP
    over concatenated towers learns such matches poorly on its own.
    """
    inputs = {name: keras.Input(shape=shape, dtype="int32", name=name)
              for name, shape in input_shapes(fc).items()}
    reg = keras.regularizers.l2(mc.embedding_l2) if mc.embedding_l2 > 0 else None

    def embedding(size: int, dim: int, name: str):
        return L.Embedding(size, dim, embeddings_regularizer=reg, name=name)

    tokens = embedding(sizes["token"], mc.token_dim, "token_embedding")

    def text_tower(x, prefix: str):
        h = L.Conv1D(mc.conv_filters, mc.kernel_size, padding="same", activation="relu",
                     name=f"{prefix}_conv1")(tokens(x))
        h = L.MaxPooling1D(2, padding="same", name=f"{prefix}_pool")(h)
        h = L.Conv1D(mc.conv_filters, mc.kernel_size, padding="same", activation="relu",
                     name=f"{prefix}_conv2")(h)
        return L.GlobalMaxPooling1D(name=f"{prefix}_vector")(h)

    query = text_tower(inputs["query_tokens"], "query")
    title = text_tower(inputs["title_tokens"], "title")

    items = embedding(sizes["item"], mc.item_dim, "item_embedding")
    categories = embedding(sizes["category"], mc.item_dim, "category_embedding")
    brands = embedding(sizes["brand"], mc.item_dim, "brand_embedding")
    seq = L.Add(name="history_sum")([items(inputs["history_items"]), categories(inputs["history_categories"]),
                                      brands(inputs["history_brands"])])
    seq = L.Conv1D(mc.conv_filters, mc.kernel_size, padding="same", activation="relu", name="history_conv")(seq)
    history = L.GlobalMaxPooling1D(name="history_vector")(seq)

    item = items(inputs["item_id"])
    category = categories(inputs["category"])
    brand = brands(inputs["brand"])
    price = embedding(sizes["price"], mc.price_dim, "price_embedding")(inputs["price_bucket"])
    candidate = L.Dense(mc.conv_filters, name="candidate_projection")(
        L.Concatenate(name="candidate_features")([item, category, brand, price]))

    query_title = L.Dot(axes=1, name="query_title_match")([query, title])
    history_item = L.Dot(axes=1, name="history_item_match")([history, candidate])
    branches = {"query": query, "title": title, "history": history, "item": item, "category": category,
                "brand": brand, "price": price, "query_title": query_title, "history_item": history_item}
    # Dense over the concatenation of the branches, written as the sum of one projection per branch (the
    # same linear map). A concatenation forces one shared int8 scale on all its inputs, which erases the
    # small-valued embeddings next to the large dot products; per-branch projections keep their own scales.
    projections = [L.Dense(mc.hidden_units, use_bias=(i == 0), name=f"hidden_{name}")(x)
                   for i, (name, x) in enumerate(branches.items())]
    x = projections[0]
    for i, p in enumerate(projections[1:], start=1):
        x = L.Add(name=f"hidden_sum_{i}")([x, p])
    x = L.ReLU(name="hidden")(x)
    x = L.Dropout(mc.dropout, name="dropout")(x)
    out = L.Dense(1, activation="sigmoid", name=SCORE)(x)
    return keras.Model(inputs=inputs, outputs=out, name="shoprank_ranker")


def serving_function(model: keras.Model, fc: FeatureConfig):
    """The serving signature: transform outputs in, one float32 score per row out."""
    specs = {name: tf.TensorSpec((None, *shape), tf.int32, name=name) for name, shape in input_shapes(fc).items()}

    @tf.function(input_signature=[specs])
    def serve(features):
        return {SCORE: tf.reshape(model(features, training=False), [-1])}

    return serve


def export_saved_model(model: keras.Model, fc: FeatureConfig, path: str | Path) -> None:
    serve = serving_function(model, fc).get_concrete_function()
    tf.saved_model.save(model, str(path), signatures={SIGNATURE: serve})


def save_model_bundle(model: keras.Model, sizes: dict[str, int], mc: ModelConfig, fc: FeatureConfig,
                      directory: str | Path) -> None:
    """SavedModel (for serving) + weights and sizes (to rebuild the Keras model for pruning)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    export_saved_model(model, fc, d / "saved_model")
    model.save_weights(str(d / "weights.h5"))
    (d / "model.json").write_text(json.dumps({"sizes": sizes, "model": mc.__dict__, "features": fc.__dict__,
                                              "inputs": list(INPUTS)}))


def load_keras_model(directory: str | Path) -> keras.Model:
    d = Path(directory)
    meta = json.loads((d / "model.json").read_text())
    model = build_model(meta["sizes"], ModelConfig(**meta["model"]), FeatureConfig(**meta["features"]))
    model.load_weights(str(d / "weights.h5"))
    return model
