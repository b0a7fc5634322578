"""Copying arrays between a static program's scope and checkpoint folders."""
from engine.checkpoint import foreign, storage
from engine.checkpoint.storage import few_names
from engine.optimizers import is_optimizer_state, is_parameter_slot
from utility.errors import UserError


def save_checkpoint(program, model_dir, name, state):
    """Save `program`'s persistables and `state` (a JSON-able dict) as model_dir/name; point `latest` at it.

    Raises NonFiniteError (a UserError) without touching model_dir when a parameter or optimizer
    value is NaN or infinite, and UserError naming the path when the disk refuses.
    """
    params, slots = program_state(program)
    return storage.write_checkpoint(model_dir, name, params, slots, state)


def program_state(program):
    """({parameter name: array}, {optimizer state name: array}): every persistable of `program`, from the scope."""
    import numpy as np
    import paddle

    scope = paddle.static.global_scope()
    params, slots = {}, {}
    parameter_names = set(program_parameters(program))
    for value in program.list_vars():
        if not value.persistable:
            continue
        var = scope.find_var(value.name)
        if var is None:
            raise RuntimeError(f"{value.name} is not in the scope: run the startup program first")
        array = np.asarray(np.array(var.get_tensor()), order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        (params if value.name in parameter_names else slots)[value.name] = array
    return params, slots



def program_parameters(program):
    """{name: shape} of the program's parameters, batch-norm statistics included."""
    return {v.name: tuple(v.shape) for v in program.global_block().all_parameters()}


def restore(program, directory):
    """Load parameters and optimizer state of a checkpoint into `program`, to resume training."""
    expected, state = _fitting_state(program, directory, with_optimizer=True)
    slots = [v.name for v in program.list_vars() if v.persistable and v.name not in expected]
    fresh = sorted(name for name in slots if is_parameter_slot(name) and name not in state)
    if fresh:  # resuming would silently restart the momentum (or Adam's moments)
        raise UserError(f"{directory} holds no optimizer state for {few_names(fresh)}: a resume would restart "
                        "the optimizer's momentum; resume from a complete checkpoint with the --optimizer it was "
                        "trained with, or start from its parameters with --pretrained_model")
    _set(program, {name: state[name] for name in list(expected) + slots if name in state}, directory)


def load_all_parameters(program, directory):
    """Load every parameter of `program` from a checkpoint (eval, infer); extra tensors are ignored."""
    expected, state = _fitting_state(program, directory, with_optimizer=False)
    _set(program, {name: state[name] for name in expected}, directory)


def _fitting_state(program, directory, with_optimizer):
    """(the program's {name: shape}, the checkpoint's tensors), after checking that every parameter fits."""
    expected = program_parameters(program)
    state = foreign.load_checkpoint_state(directory, expected, with_optimizer=with_optimizer)
    missing = sorted(set(expected) - set(state))
    wrong = sorted(f"{n} {tuple(state[n].shape)} -> {expected[n]}" for n in expected
                   if n in state and tuple(state[n].shape) != expected[n])
    if missing or wrong:
        problems = ([f"missing {few_names(missing)}"] if missing else []) + \
                   ([f"other shape: {few_names(wrong)}"] if wrong else [])
        raise UserError(f"{directory} does not fit this network ({'; '.join(problems)}); "
                        "check --model, --embedding_size, --neck and the training list")
    return expected, state


def _set(program, arrays, directory):
    """Put arrays into the scope tensors of `program`, converting between float widths; shapes must match."""
    import numpy as np
    import paddle

    scope = paddle.static.global_scope()
    converted, wrong = {}, []
    for name, value in arrays.items():
        current = np.array(scope.find_var(name).get_tensor())
        if value.shape != current.shape:
            wrong.append(f"{name} {value.shape} -> {current.shape}")
        elif value.dtype != current.dtype:
            if value.dtype.kind != current.dtype.kind or current.dtype.kind not in "fiu":
                raise UserError(f"{name} in {directory} is {value.dtype}, this network needs {current.dtype}")
            value = value.astype(current.dtype)
        converted[name] = value
    if wrong:
        raise UserError(f"{directory} does not fit this network (other shape: {few_names(sorted(wrong))})")
    bad = storage.non_finite_names(converted)
    if bad:  # it would embed as NaN or zeros and be scored as if it were a model
        raise UserError(f"refusing {directory}: {few_names(bad)} hold NaN or infinite values "
                        "(a diverged or damaged model)")
    paddle.static.set_program_state(program, converted)


def load_matching(program, directory, log=print, model=None):
    """Load the parameters whose name and shape match (finetuning); report what was skipped and why.

    `model` (the current --model), when given, is compared with the checkpoint's own, and a
    difference is said in one line. Returns the number of parameters loaded.
    """
    expected = program_parameters(program)
    state = foreign.load_checkpoint_state(directory, expected, with_optimizer=False)
    kept, other_shape = {}, []
    for name, shape in expected.items():
        if name in state:
            if tuple(state[name].shape) == shape:
                kept[name] = state[name]
            else:
                other_shape.append(f"{name} {tuple(state[name].shape)} -> {shape}")
    not_in_file = sorted(set(expected) - set(state))
    unused = sorted(n for n in state if n not in expected and not is_optimizer_state(n))
    if not state:
        raise UserError(f"{directory} holds no parameter arrays: is it a model's parameter file?")
    if not kept:
        raise UserError(f"no parameter of this network was found in {directory} "
                        f"(it holds e.g. {few_names(sorted(state))}); is --model right?")
    _set(program, kept, directory)
    log(f"Loaded {len(kept)} of {len(expected)} parameters from {directory}")
    trained_as = _trained_model(directory)
    if model and trained_as and trained_as != model:
        log(f"The checkpoint was trained as {trained_as}; this network is {model}: "
            f"loaded {len(kept)} of {len(expected)}")
    if other_shape:
        log(f"Skipped {len(other_shape)} with another shape: {few_names(other_shape)}")
    if not_in_file:
        log(f"Kept the initial value of {len(not_in_file)} not in the file: {few_names(not_in_file)}")
    if unused:
        log(f"Ignored {len(unused)} from the file that this network does not have: {few_names(unused)}")
    return len(kept)


def _trained_model(directory):
    """--model of the run that saved `directory`, when its state.json says (a note only: never an error)."""
    args = (storage.read_state(directory) or {}).get("args")
    return args.get("model") if isinstance(args, dict) else None

