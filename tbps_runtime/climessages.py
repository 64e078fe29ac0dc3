"""The command line's words for library errors: each error code in flags.

A library error states facts in Python's terms (``everything=True``) and carries a ``code`` and the
``facts`` behind its message (:class:`~tbps_runtime.errors.TbpsError`). The one error path of every
command (:func:`tbps_runtime.clikit.user_error_line`) prints :func:`in_flags` of it: the line below for
its code, or the library's own message for an error without one (or with a code the command line
words no differently). The service words the same codes for HTTP (:mod:`tbps_runtime.serve.messages`).

Two kinds of entries:

- ``parameter_invalid``: the message starts with the parameter(s) it names (``fps must be in (0, 240],
  got 0``); the command line says the option instead (``--fps must be ...``), from :data:`OPTIONS`;
- every other code in :data:`WORDS`: the whole line, a template over the error's facts (``{message}``:
  the library's) or a function of them.
"""

from __future__ import annotations

from tbps_runtime.errors import TbpsError, Wording

# The option of each library parameter that a parameter_invalid error names.
OPTIONS = {
    "fps": "--fps", "window": "--window", "keep": "--keep", "batch_size": "--batch-size",
    "actors": "--ray-actors", "threads": "--threads", "since": "--since", "until": "--until",
    "older_than": "--older-than", "min_score": "--min-score", "device": "--device",
    "token_limit": "--token-limit", "images": "--images", "output_root": "--root", "from_format": "--from",
    "to_format": "--to", "start": "--start", "camera": "--camera", "source": "--source",
}

_FAISS_AGAIN = "rebuild it with tbps index --faiss SPEC, or rank with --exact"
_TRT_AGAIN = "rebuild the engines on this machine with `tbps export --ckpt m.pt --trt`"
_NOT_OURS = "pick another -o, or pass --force to replace it"

WORDS: dict[str, Wording] = {
    # -- training (tbps train) ------------------------------------------------------------------------
    "init_with_resume": "--init starts a new run from another checkpoint, --resume continues the run in -o: "
                        "give one of them",
    "init_with_image_weights": "with --init the image backbone's weights are the checkpoint's: drop --image-weights",
    "init_overwrites_source": "-o {path} is the checkpoint --init starts from: choose another -o",
    "resume_other_data": "{change}: --resume on the data it was trained on, or --init from it (a new run, -o "
                         "elsewhere) to fine-tune it on this one",
    # -- stores (tbps ingest, tbps gallery) ----------------------------------------------------------
    "delete_everything_unconfirmed": "this would remove all {rows} rows of {location}: add --yes to do it",
    "delete_without_condition": "say what to delete: --older-than AGE, --camera, --source, --track, --since/--until",
    "store_read_only": "{message}",
    "store_path_is_file": "{path} is a file, not a store directory: pick another --gallery",
    "store_path_not_empty": "{path} is not empty and not a tbps store (no {catalog}): pick a new or empty directory "
                            "for --gallery",
    "store_local_not_milvus": "{directory} is a local store: --store {milvus} needs a new directory",
    "store_milvus_elsewhere": "{directory} keeps its rows in {collection} at {uri}, not --store {milvus}",
    "ingest_settings_changed": "{source} was ingested into {directory} with other settings ({differences}): use the "
                               "same ones to continue, or remove its rows first (tbps gallery delete {directory} "
                               "--source {source})",
    "ingest_progress_damaged": "the saved progress of {source} in {directory} is damaged: remove its rows (tbps "
                               "gallery delete {directory} --source {source}) and ingest it again",
    # -- galleries, shards, FAISS (tbps index, tbps rank) --------------------------------------------
    "images_missing": "--images: no such directory or list file: {source}",
    "images_is_an_image": "--images takes a directory or a list file (one image path per line), not an image: "
                          "{source}",
    "index_strict_unreadable": lambda f: f"{f['reason']} (--strict makes unreadable images fatal" + (
        f"; the {f['kept']} image(s) before its batch are kept: re-run to resume)" if f["kept"] else ")"),
    "gallery_output_foreign": "{output} exists and is not a tbps gallery (no {sidecar} beside it): " + _NOT_OURS,
    "gallery_output_foreign_sidecar": "{sidecar} is not a tbps gallery description (no '{tag}' format tag), and "
                                      "indexing into {output} would replace it with one: " + _NOT_OURS,
    "gallery_of_another_bundle": "{what} was built with the bundle of fingerprint {built_with}, not this "
                                 "bundle{where} ({fingerprint}): its scores would be meaningless; re-index it with "
                                 "tbps index --bundle, or rank with the bundle that built it",
    "gallery_record_malformed": "{sidecar} has a malformed {record} record; re-index with tbps index --{record}",
    "shard_syntax": "--shard takes I/N (shard I of N, I counted from 0), e.g. --shard 0/4; got {text!r}",
    "shard_count_invalid": "--{message}",
    "shard_index_invalid": "--shard {text}: shards are numbered from 0, so I must be 0..{last} (with a Slurm array "
                           "use --array=0-{last})",
    "shard_output_ambiguous": "-o {text}: write {text}/ (trailing slash) to put {file} in that directory, or name "
                              "the shard's .npy file",
    "shards_none": "{directory} holds no shard galleries{busy}: tbps index --shard I/N -o {directory}/ writes "
                   "shard-I-of-N.npy there",
    "shards_missing": "{directory} lacks shard{plural} {missing} of {count} (it has {present}){busy}: run "
                      "tbps index --shard {first}/{count} with the same --images and --bundle",
    "shards_of_different_lists": "the shards in {directory} are of different image lists: {first}, {other}; index "
                                 "every shard from the same --images with the same N",
    "shard_block_wrong": "{path} does not hold block {index} of {count} of its list of {total} images (images "
                         "{start}..{last}): re-index it with tbps index --shard {index}/{count}",
    "faiss_spec_invalid": "--faiss {spec}: FAISS cannot make an index from this spec for {dims}-dimensional rows "
                          "({reason}); examples: Flat, IVF1024,Flat, IVF1024,PQ64, HNSW32",
    "faiss_output_foreign": "{path} exists and is not a FAISS index tbps wrote, and --faiss would replace it: move "
                            "it, or pass --force to replace it",
    "faiss_index_missing": "{sidecar} records the FAISS index {file}, which is missing: " + _FAISS_AGAIN,
    "faiss_index_stale": "{path} holds {rows} rows, its gallery {gallery} {gallery_rows}: " + _FAISS_AGAIN,
    "faiss_index_damaged": "{message} (tbps index --faiss SPEC)",
    "faiss_option_without_index": lambda f: f"{f['name']} applies to a FAISS index: " + (
        "drop --exact" if f["exact"] else "this gallery has none (tbps index --faiss SPEC builds one)"),
    "ray_missing": "--ray needs Ray Data, which is not installed ({reason}): {hint}",
    "min_score_uncalibrated": "the bundle {bundle} has no calibrated threshold for --min-score auto: run tbps "
                              "calibrate --gallery STORE (a store's own) or tbps calibrate --bundle DIR --dataset "
                              "NAME --root DIR, or give a number",
    "store_calibration_without_captions": "the bundle {bundle} carries no held-out captions (exported before they "
                                          "were added): pass --captions FILE, one caption per line of people who "
                                          "are not in the footage",
    # -- bundles and backends -----------------------------------------------------------------------
    "explain_graphs_missing": "{directory} has no {file}: re-export it with tbps export --ckpt m.pt --explain --force",
    "tensorrt_missing": "the tensorrt backend needs TensorRT and cuda-python (pip install 'tbps[trt]'); use "
                        "--backend onnxruntime on machines without them",
    "tensorrt_engine_missing": "the bundle has no TensorRT engine for {tower}: " + _TRT_AGAIN + ", or use --backend "
                               "onnxruntime",
    "tensorrt_engine_unusable": "{reason}: " + _TRT_AGAIN + "{extra}",
    # -- tbps serve ---------------------------------------------------------------------------------
    "gallery_without_bundle": "the gallery {gallery} records no bundle: pass --bundle DIR",
    "bundle_missing": lambda f: f"no bundle at {f['bundle']}" + (
        " (the one the gallery records): pass --bundle" if f["recorded"] else ""),
    "serve_exposed_without_key": "--host {host} is reachable from other machines: an API key is required there "
                                 "(--api-key-file FILE or {environment}); or serve on 127.0.0.1",
    "api_key_file_missing": "--api-key-file {path}: no such file",
    "cors_origin_invalid": "--cors-origin {origin!r} is not an origin: give scheme and host, e.g. "
                           "https://ops.example.org or http://localhost:3000 (no '*', no path)",
    # -- synthetic data (tbps synth, tbps synth-footage) ---------------------------------------------
    "output_not_empty": "{path} exists and is not empty: pick a new directory or pass --overwrite",
    "footage_frames_invalid": "seconds x fps = {frames} frames per camera: it must be 1..{most}; change --seconds "
                              "or --fps",
    "footage_too_short": "seconds={seconds} is too short for people to walk into view: use >= 2, or --still",
    "footage_too_crowded": "cannot show {people} people in {cameras} camera(s) x {seconds} s with at most {most} in "
                           "view at a time: raise --seconds or --cameras, or lower --people",
    "still_footage_too_crowded": "still footage shows at most {most} people per camera: {people} people need "
                                 "{cameras} cameras (--cameras), or lower --people",
    # -- the trainer and its data tools (tbps train, tbps data) --------------------------------------
    "device_without_cuda": "--device {device}: this machine has {build}; use --device cpu, or install PyTorch with "
                           "CUDA on a machine with an NVIDIA GPU",
    "image_weights_not_packaged": "only mobilenet_v2 has packaged ImageNet weights; for {backbone} pass "
                                  "--image-weights PATH (an ImageNet state dict with torchvision names)",
    "packaged_weights_missing": lambda f: f["reason"] + (
        " (or pass --image-weights PATH, or --image-weights none)" if f["none_too"] else " or pass --image-weights "
                                                                                          "PATH"),
    "checkpoint_output_foreign": "-o {path} exists and is not a tbps checkpoint: training would replace it; choose "
                                 "another -o, or move the file",
    "train_state_malformed": "{path} has a malformed train_state (epoch, optimizer, scheduler): the file is "
                             "damaged; train again without --resume",
    "tokenizer_unavailable": "{reason}: pass --token-limit N to count words instead",
    "csv_dataset_missing": "no {wanted} under {path}{held} (--dataset csv reads one row per image, person_id, "
                           "caption)",
    "csv_dataset_suffix": "{path} is not a .csv or .jsonl file: --dataset csv reads one row per (image, person_id, "
                          "caption) from either",
    "convert_input_ambiguous": "{path} holds the APTM files of {count} datasets ({prefixes}): pass one of their "
                               "files, e.g. --input {example}",
    "convert_output_exists": "{path} exists: pass --overwrite to replace it, or choose another --root",
    "convert_images_folder_in_the_way": "{link} is a folder: images are linked, never copied or replaced; move it "
                                        "away, or leave out --images to keep it",
    "convert_images_link_differs": "{link} links to {current}, not {target}: pass --overwrite to relink it",
    # -- export (tbps export, tbps triton) -----------------------------------------------------------
    "fp16_without_trt": "--fp16 selects the precision of TensorRT engines: add --trt",
    "fp16_converter_missing": "--fp16 needs onnxconverter-common: pip install 'tbps[export]'",
    "tensorrt_build_failed": "{error}. The ONNX bundle at {output} is complete and valid without TensorRT engines; "
                             "build them on the GPU that will run them (tbps export --trt --force)",
    "bundle_output_exists": "output {output} already exists: choose another -o or pass --force to replace it",
    "bundle_output_foreign": "output {output} exists and is not a tbps bundle: not replacing it, even with --force",
    "triton_output_foreign": "{output} is not empty and is not a tbps Triton repository (no {file} with format "
                             "{format!r}): not replacing it, even with --force; choose another path",
    "triton_output_in_bundle": "-o {output} is inside the bundle {bundle}: write the Triton repository elsewhere",
    "triton_output_exists": "Triton repository {output} already exists: choose another path or pass --force to "
                            "replace it",
}


def in_flags(error: TbpsError) -> str:
    """The line the command line prints for ``error``: its code in flags, else its message."""
    return error.worded(WORDS, OPTIONS)


__all__ = ["OPTIONS", "WORDS", "in_flags"]
