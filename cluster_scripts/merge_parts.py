"""The finish step of a split still, inside Blender: its parts merged into the frame, denoised once.

Cycles' merge operator (bpy.ops.cycles.merge_images) combines two multilayer EXRs of the same render
with different samples, weighting each pass by the sample count the file records; the merged file
records the sum, so the parts are merged one after another. Then, when the scene denoises, Cycles'
denoise operator (bpy.ops.cycles.denoise_animation, the scene's denoiser and view layer settings) runs
once on the merged EXR, from the denoising data passes the parts wrote. Last the frame is written in
the job's format with the scene's colour management, under a temp name then renamed.

Every part stays in out/: a lost part can be rendered again with its own range of samples and merged
again. A merge that fails with every part there leaves `frame_NNNNNN.merge-failed` with the reason. A
denoise Cycles refuses (its operator wants the denoising data and vector passes in the file) leaves the
merged image as the frame, and the reason in the summary.
"""

from __future__ import annotations

import os

import bpy


def part_path(out_dir: str, frame: int, part: int) -> str:
    return os.path.join(out_dir, f"frame_{frame:06d}.part{part:03d}.exr")  # as braas_hpc.core.split


def _open_scene(job_dir: str, scene_name: str) -> bpy.types.Scene:
    """The job's scene (its denoiser, view layers and colour management); its scripts stay off (-Y)."""
    from render_task import pick_scene  # installed beside this file

    bpy.ops.wm.open_mainfile(filepath=os.path.join(job_dir, "in", "scene.blend"), load_ui=False)
    return pick_scene(scene_name)


def _merge(parts: list[str], target: str) -> None:
    current = parts[0]
    for index, part in enumerate(parts[1:], start=2):
        step = f"{target}.{index}.exr" if index < len(parts) else target
        if os.path.lexists(step):
            os.unlink(step)
        bpy.ops.cycles.merge_images(input_filepath1=current, input_filepath2=part, output_filepath=step)
        if not os.path.isfile(step):
            raise RuntimeError(f"Cycles wrote no merged image after part {index}")
        if current != parts[0]:
            os.unlink(current)
        current = step


def _write_frame(scene: bpy.types.Scene, source: str, image_format: str, final: str) -> None:
    """The merged EXR as the job's frame: a multilayer EXR as it is, any other format through Blender's
    own writer with the scene's view transform and the format's settings."""
    if image_format == "OPEN_EXR_MULTILAYER":
        os.replace(source, final)
        return
    settings = scene.render.image_settings
    if settings.file_format != image_format:
        if hasattr(settings, "media_type"):  # Blender 5.0+
            settings.media_type = "IMAGE"
        settings.file_format = image_format
    image = bpy.data.images.load(source, check_existing=False)
    temp = os.path.join(os.path.dirname(final), "." + os.path.basename(final) + ".part")
    if os.path.lexists(temp):
        os.unlink(temp)
    image.save_render(temp, scene=scene)
    bpy.data.images.remove(image)
    os.replace(temp, final)


def merge_still(job_dir: str, spec: dict, extension: str) -> dict:
    """Merge the parts of the split still `spec` (job.json's spec) into its frame; what happened, for the
    summary. Nothing is merged while a part is missing (the next round's finish step merges)."""
    out_dir = os.path.join(job_dir, "out")
    frame = int(spec["split_frame"])
    parts = [part_path(out_dir, frame, p) for p in spec["frames"]]
    missing = [p for p, path in zip(spec["frames"], parts, strict=True) if not os.path.isfile(path)]
    final = os.path.join(out_dir, f"frame_{frame:06d}.{extension}")
    report: dict = {"parts": len(parts), "parts_missing": missing, "part_samples": list(spec["part_samples"]),
                    "merged": False, "denoised": False}
    if missing:
        return {**report, "note": f"parts {missing} missing: nothing merged yet"}
    failed = os.path.join(out_dir, f"frame_{frame:06d}.merge-failed")
    merged = os.path.join(out_dir, f".frame_{frame:06d}.merged.exr")
    denoised = os.path.join(out_dir, f".frame_{frame:06d}.denoised.exr")
    try:
        scene = _open_scene(job_dir, spec.get("scene_name", ""))
        _merge(parts, merged)
        result = merged
        if scene.cycles.use_denoising:
            if os.path.lexists(denoised):
                os.unlink(denoised)
            try:
                bpy.ops.cycles.denoise_animation(input_filepath=merged, output_filepath=denoised)
                result = denoised
                report["denoised"] = True
            except RuntimeError as exc:  # a pass it wants is not in the file: the merged image still counts
                report["denoise_error"] = f"{exc}".strip() + "; the frame is the merged image, not denoised"
        _write_frame(scene, result, spec["image_format"], final)
    except Exception as exc:  # noqa: BLE001 - said in the summary and beside the parts; the parts stay
        with open(failed, "w", encoding="utf-8") as stream:
            stream.write(f"{type(exc).__name__}: {exc}\n")
        return {**report, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        for temp in (merged, denoised):
            if os.path.lexists(temp):
                os.unlink(temp)
    return {**report, "merged": True}
