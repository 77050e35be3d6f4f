"""Export to ONNX through skl2onnx.

skl2onnx converts scikit-learn models, and every estimator of this package has
a scikit-learn twin (``to_sklearn()``): a ``StandardScaler`` for
:class:`~sklearn_bn.BatchNormScaler`, an ``MLPClassifier`` or ``MLPRegressor``
with batch norm folded into the weights for the networks.
:func:`register_converters` tells skl2onnx to convert each network as its
twin, and the scaler as its ``transform`` computes, so that
``skl2onnx.to_onnx`` works on the estimators and on pipelines that hold them.
Needs the ``onnx`` extra (``pip install "sklearn_bn[onnx]"``, or ``pip install
".[onnx]"`` from a clone): skl2onnx and onnxruntime.
"""

__all__ = ["register_converters"]


def _twin_options(scope, estimator, keep):
    """The options given for ``estimator`` that its twin's converter takes."""
    options = scope.get_options(estimator) or {}
    return {name: value for name, value in options.items() if name in keep}


def _refuse_categorical(estimator):
    """Raise when the network's input handling one-hot encodes categorical
    features, which the export does not cover."""
    from sklearn_bn._preprocessing import InputHandling

    handling = InputHandling.of(estimator)
    if handling is not None and handling.is_categorical.any():
        raise NotImplementedError(
            f"{type(estimator).__name__} has categorical features (one-hot encoded by "
            "its input handling), which the ONNX export does not cover: it exports "
            "numeric input only. Fit with numeric input (or input_preprocessing=None "
            "behind your own encoder) to export to ONNX."
        )


def _refuse_other_width(operator):
    """Raise when the inputs' declared columns (their sum, for a DataFrame's
    one input per column) are not the model's ``n_features_in_``: the graph
    would be built, and refused only when a runtime loads it."""
    estimator = operator.raw_operator
    widths = [variable.get_second_dimension() for variable in operator.inputs]
    if None in widths or len(widths) == 0:
        return  # a width left open: the runtime checks the data
    if sum(widths) != estimator.n_features_in_:
        raise ValueError(
            f"X has {sum(widths)} features, but {type(estimator).__name__} is "
            f"expecting {estimator.n_features_in_} features as input."
        )


def _checking_input(shape_calculator, categorical=True):
    """``shape_calculator``, after :func:`_refuse_other_width` and (for the
    networks) :func:`_refuse_categorical`: skl2onnx calls it first, and a
    DataFrame with category columns comes as several inputs, which it would
    refuse with a message about their number."""

    def calculate(operator):
        if categorical:
            _refuse_categorical(operator.raw_operator)
        _refuse_other_width(operator)
        shape_calculator(operator)

    return calculate


def _network_input(estimator, operator, opv):
    """The network's input as ONNX ops on the operator's input, and the plain
    scikit-learn MLP twin that takes it.

    Without input handling: the input itself and ``to_sklearn()``. With it,
    the numeric handling (see ``sklearn_bn._preprocessing``): ``tanh((x -
    center) / (scale * c))`` (its factor ``c`` folded into the twin's first
    layer, as ``to_sklearn()`` folds it), NaN replaced by 0, and the missing
    indicators and the piecewise-linear encoding appended; sparse-fitted
    models pass the values through. One-hot encoded categorical features are
    not exported.
    """
    import numpy as np
    from skl2onnx.algebra.onnx_ops import (
        OnnxCast,
        OnnxConcat,
        OnnxDiv,
        OnnxGather,
        OnnxIsNaN,
        OnnxSub,
        OnnxTanh,
        OnnxWhere,
    )
    from skl2onnx.common.data_types import guess_numpy_type, guess_proto_type

    from sklearn_bn._preprocessing import InputHandling

    # A network with categorical features does not get here: its shape
    # calculator, which skl2onnx calls first, refuses it.
    twin = estimator.to_sklearn()
    handling = InputHandling.of(estimator)
    if handling is None:
        return operator.inputs[0], twin
    x = operator.inputs[0]
    dtype = guess_numpy_type(x.type)
    nan = OnnxIsNaN(x, op_version=opv)
    z = x
    if not handling.passthrough:
        z = OnnxSub(z, handling.center.astype(dtype), op_version=opv)
        z = OnnxDiv(z, (handling.scale * handling.clip).astype(dtype), op_version=opv)
        z = OnnxTanh(z, op_version=opv)
    z = u = OnnxWhere(nan, np.zeros(1, dtype=dtype), z, op_version=opv)
    if len(handling.indicator_pos):
        indicators = OnnxCast(
            OnnxGather(
                nan, handling.indicator_pos.astype(np.int64), axis=1, op_version=opv
            ),
            to=guess_proto_type(x.type),
            op_version=opv,
        )
        z = OnnxConcat(z, indicators, axis=1, op_version=opv)
    if handling.n_spline_outputs:
        z = OnnxConcat(
            z, _spline_encoding(handling, u, dtype, opv), axis=1, op_version=opv
        )
    return z, twin.steps[-1][1]


def _spline_encoding(handling, u, dtype, opv):
    """The piecewise-linear encoding of the clipped numeric features ``u``
    as ONNX ops (``InputHandling.spline_ramps``)."""
    import numpy as np
    from skl2onnx.algebra.onnx_ops import (
        OnnxAdd,
        OnnxGather,
        OnnxMax,
        OnnxMin,
        OnnxMul,
        OnnxSub,
    )

    column, left, rise, floor, right, fall = handling.spline_ramps()
    g = OnnxGather(u, column.astype(np.int64), axis=1, op_version=opv)
    up = OnnxAdd(
        OnnxMul(
            OnnxSub(g, left.astype(dtype), op_version=opv),
            rise.astype(dtype),
            op_version=opv,
        ),
        floor.astype(dtype),
        op_version=opv,
    )
    down = OnnxMul(
        OnnxSub(right.astype(dtype), g, op_version=opv),
        fall.astype(dtype),
        op_version=opv,
    )
    v = OnnxMin(up, down, op_version=opv)
    v = OnnxMax(v, np.zeros(1, dtype=dtype), op_version=opv)
    return OnnxMin(v, np.ones(1, dtype=dtype), op_version=opv)


def _convert_classifier(scope, operator, container):
    """Convert an MLPBNClassifier as its MLPClassifier twin.

    The twin's outputs (label and probabilities, without ZipMap) become this
    operator's two outputs; skl2onnx's classifier parser adds the ZipMap or
    the class labels that the caller's options ask for.
    """
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import OnnxIdentity

    estimator = operator.raw_operator
    opv = container.target_opset
    options = _twin_options(scope, estimator, keep=("nocl",))
    options["zipmap"] = False
    network_input, mlp = _network_input(estimator, operator, opv)
    twin = OnnxSubEstimator(mlp, network_input, op_version=opv, options=options)
    for i, output in enumerate(operator.outputs[:2]):
        OnnxIdentity(twin[i], op_version=opv, output_names=[output]).add_to(
            scope, container
        )
    # skl2onnx records the twin's options in the caller's options dict, under
    # the twin's id: a later object given that id would pick them up.
    if isinstance(getattr(scope, "options", None), dict):
        scope.options.pop(id(mlp), None)


def _convert_scaler(scope, operator, container):
    """Convert a BatchNormScaler as :meth:`~sklearn_bn.BatchNormScaler.transform`
    computes: ``(x - center) * scale + shift`` in the input's precision, the
    centre being the mean rounded to it and the shift taking the rounding
    error. The StandardScaler twin's ``(x - mean_) / scale_`` rounds
    ``mean_`` (beta folded in) to float32 for float32 input, which moves a
    feature whose mean is large against its spread (a constant feature with
    a ``beta``, say) by that rounding over the spread. With the ``div``
    option, the twin's graph (skl2onnx's StandardScaler converter, which
    takes that option). Several inputs (a DataFrame's columns) are joined
    side by side first, as skl2onnx's scaler converter joins them."""
    import numpy as np
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import (
        OnnxAdd,
        OnnxCast,
        OnnxConcat,
        OnnxMul,
        OnnxSub,
    )
    from skl2onnx.common.data_types import guess_numpy_type
    from skl2onnx.proto import onnx_proto

    estimator = operator.raw_operator
    opv = container.target_opset
    options = _twin_options(scope, estimator, keep=("div",))
    inputs = operator.inputs
    x = inputs[0] if len(inputs) == 1 else OnnxConcat(*inputs, axis=1, op_version=opv)
    if options:
        OnnxSubEstimator(
            estimator.to_sklearn(),
            x,
            op_version=opv,
            options=options,
            output_names=operator.outputs[:1],
        ).add_to(scope, container)
        return
    # The output's type: the input's, float32 for integer input (which
    # skl2onnx's StandardScaler converter also casts).
    dtype = guess_numpy_type(operator.outputs[0].type)
    center, scale, shift, wide = estimator._coefficients(dtype)
    work = dtype
    powers = ()
    if wide is not None:
        # A scale beyond the dtype's range: the graph runs in float64, where
        # transform computes only these features so (the others may then
        # differ from transform's by the dtype's rounding).
        work = np.float64
        center, scale, shift, wide = estimator._coefficients(work)
    if wide is not None:
        # gamma / std beyond float64's range: a mantissa and a power of two,
        # as transform computes these features; 1 for the others, which
        # changes no bit.
        columns, origin, multiplier, exponent, target = wide
        center[columns], scale[columns], shift[columns] = origin, multiplier, target
        # 2 ** exponent as three powers of two within float64's range: the
        # products are exact unless the result is subnormal or overflows
        # (transform's bits, but where x - center is itself subnormal).
        third = np.trunc(exponent / 3).astype(np.int32)
        power, last = np.ones_like(scale), np.ones_like(scale)
        power[columns] = np.ldexp(1.0, third)
        last[columns] = np.ldexp(1.0, exponent - 2 * third)
        powers = (power, power, last)
    proto = {
        np.float32: onnx_proto.TensorProto.FLOAT,
        np.float64: onnx_proto.TensorProto.DOUBLE,
    }
    if guess_numpy_type(inputs[0].type) != work:
        x = OnnxCast(x, to=proto[work], op_version=opv)
    out = {"output_names": operator.outputs[:1]}
    y = OnnxMul(OnnxSub(x, center, op_version=opv), scale, op_version=opv)
    for power in powers:
        y = OnnxMul(y, power, op_version=opv)
    y = OnnxAdd(
        y,
        shift,
        op_version=opv,
        **({} if work != dtype else out),
    )
    if work != dtype:
        y = OnnxCast(y, to=proto[dtype], op_version=opv, **out)
    y.add_to(scope, container)


def _regressor_shape(operator):
    """skl2onnx's regressor shapes, with ``n_outputs_`` columns."""
    from skl2onnx.common.shape_calculator import (
        calculate_linear_regressor_output_shapes,
    )

    calculate_linear_regressor_output_shapes(operator)  # checks, dtype, [N, 1]
    n_rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type.shape = [n_rows, operator.raw_operator.n_outputs_]


def _convert_regressor(scope, operator, container):
    """Convert an MLPBNRegressor as its MLPRegressor twin.

    skl2onnx's MLPRegressor converter writes its prediction as one column
    (N * n_outputs rows when there are several outputs): reshaped here to
    (N, n_outputs), row by row as ``predict`` returns it. skl2onnx knows no
    exponential output activation (the Poisson loss's): the twin is
    converted with an identity output, followed by an ``Exp`` node.
    """
    import numpy as np
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import OnnxExp, OnnxReshapeApi13

    estimator = operator.raw_operator
    opv = container.target_opset
    network_input, mlp = _network_input(estimator, operator, opv)
    poisson = mlp.out_activation_ == "exp"
    if poisson:
        mlp.out_activation_ = "identity"
    twin = OnnxSubEstimator(mlp, network_input, op_version=opv)
    shape = np.array([-1, estimator.n_outputs_], dtype=np.int64)
    if not poisson:
        OnnxReshapeApi13(
            twin, shape, op_version=opv, output_names=operator.outputs[:1]
        ).add_to(scope, container)
        return
    OnnxExp(
        OnnxReshapeApi13(twin, shape, op_version=opv),
        op_version=opv,
        output_names=operator.outputs[:1],
    ).add_to(scope, container)


def register_converters():
    """Register skl2onnx converters for the estimators of sklearn_bn.

    After this call, :func:`skl2onnx.to_onnx` and
    :func:`skl2onnx.convert_sklearn` accept
    :class:`~sklearn_bn.BatchNormScaler`, :class:`~sklearn_bn.MLPBNClassifier`
    and :class:`~sklearn_bn.MLPBNRegressor`, alone or inside pipelines and
    other meta-estimators. A network is converted as its scikit-learn twin,
    ``to_sklearn()``, with skl2onnx's own converter for that twin
    (``MLPClassifier``, ``MLPRegressor``), so it accepts the same inputs
    and options: ``zipmap``, ``nocl`` and ``output_class_labels`` for the
    classifier. The regressor's output has shape (n_samples, n_outputs). A
    scaler is converted as its :meth:`~sklearn_bn.BatchNormScaler.transform`
    computes, ``(x - center) * scale + shift`` (the twin's float32
    arithmetic loses what the centre's rounding moves, see
    :meth:`~sklearn_bn.BatchNormScaler.to_sklearn`), and takes the inputs
    skl2onnx's ``StandardScaler`` converter takes (float32, float64, and
    int64 computed in float32); with skl2onnx's ``div`` option it is
    converted as its twin. Calling it again is harmless.

    Raises
    ------
    ImportError
        If skl2onnx is not installed (``pip install skl2onnx onnxruntime``,
        or the ``onnx`` extra of sklearn_bn).
    ValueError
        From a later conversion, when the declared input (its columns summed
        over the inputs, for a DataFrame's one input per column) is not
        ``n_features_in_`` wide, as skl2onnx's ``StandardScaler`` converter
        refuses such a declaration; an input of open width is checked by the
        runtime, with the data.

    See Also
    --------
    sklearn_bn.BatchNormScaler.to_sklearn : The scaler's twin.
    sklearn_bn.MLPBNClassifier.to_sklearn : The classifier's twin.
    sklearn_bn.MLPBNRegressor.to_sklearn : The regressor's twin.

    Notes
    -----
    The ONNX graph of a network computes what its twin computes, and that of
    a scaler what its ``transform`` computes, in the input's precision:
    for a model trained on float64, a float64 input gives a float64 graph
    whose outputs agree with ``predict``, ``predict_proba`` and
    ``transform`` to about 1e-15, a float32 input a float32 graph that
    agrees to float32 rounding (about 1e-6 relative to the largest
    intermediate value). A model trained on float32 holds float32 weights,
    and so does its graph: with float64 input it agrees to about 1e-7
    (``predict`` folds batch norm into the weights in float64, the twin
    rounds the folded weights to float32). As for scikit-learn's
    own classifiers, a float64 classifier graph needs
    ``options={"zipmap": False}``: ONNX's ZipMap operator takes float32
    probabilities only.

    Examples
    --------
    >>> import numpy as np
    >>> import onnxruntime as ort
    >>> from skl2onnx import to_onnx
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn_bn import BatchNormScaler, MLPBNClassifier
    >>> from sklearn_bn.onnx import register_converters
    >>> register_converters()
    >>> X, y = load_iris(return_X_y=True)
    >>> X = X.astype(np.float32)
    >>> model = make_pipeline(
    ...     BatchNormScaler(),
    ...     MLPBNClassifier(
    ...         hidden_layer_sizes=(16,), early_stopping=True, random_state=0
    ...     ),
    ... ).fit(X, y)
    >>> onx = to_onnx(model, X[:1], options={"zipmap": False})
    >>> session = ort.InferenceSession(
    ...     onx.SerializeToString(), providers=["CPUExecutionProvider"]
    ... )
    >>> labels, proba = session.run(None, {"X": X})
    >>> bool((labels == model.predict(X)).all())
    True
    >>> bool(np.allclose(proba, model.predict_proba(X), atol=1e-5))
    True
    """
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
    )
    from skl2onnx.shape_calculators.scaler import (
        calculate_sklearn_scaler_output_shapes,
    )

    from sklearn_bn import BatchNormScaler, MLPBNClassifier, MLPBNRegressor

    update_registered_converter(
        BatchNormScaler,
        "SklearnBNBatchNormScaler",
        _checking_input(calculate_sklearn_scaler_output_shapes, categorical=False),
        _convert_scaler,
        options={"div": ["std", "div", "div_cast"]},
    )
    update_registered_converter(
        MLPBNClassifier,
        "SklearnBNMLPBNClassifier",
        _checking_input(calculate_linear_classifier_output_shapes),
        _convert_classifier,
        # Declaring zipmap makes skl2onnx parse it as a classifier.
        options={
            "zipmap": [True, False, "columns"],
            "output_class_labels": [False, True],
            "nocl": [True, False],
        },
    )
    update_registered_converter(
        MLPBNRegressor,
        "SklearnBNMLPBNRegressor",
        _checking_input(_regressor_shape),
        _convert_regressor,
    )
