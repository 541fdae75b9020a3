"""The ``mmproj`` setting (issue 8, images to llama.cpp): a llama.cpp model sees images when it
has a multimodal projector file, decided by configuration only; every wrong use is refused at
load in one line naming the file (or variable) and the key. The projector itself is exercised
in tests/test_llamacpp_vision.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from genbot.chatbot import make_backend
from genbot.profiles import model_settings
from genbot.reload import MODEL_FIELDS
from genbot.settings import Settings, SettingsError, sees_images

GGUF_MAGIC = b"GGUF\x03\x00\x00\x00"  # the magic; llama.cpp itself judges the rest


@pytest.fixture
def projector(tmp_path: Path) -> Path:
    path = tmp_path / "mmproj-model-f16.gguf"
    path.write_bytes(GGUF_MAGIC)
    return path


def load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "genbot.toml"
    config.write_text(text, encoding="utf-8")
    return Settings.load(config, environ={})


def test_a_projector_makes_a_llamacpp_model_see(tmp_path: Path, projector: Path) -> None:
    loaded = load(tmp_path, f"mmproj = {str(projector)!r}\n")
    assert loaded.mmproj == str(projector) and not loaded.vision
    assert sees_images(loaded)
    assert not sees_images(Settings())  # llama.cpp without a projector: [image: name] notes
    both = load(tmp_path, f"vision = true\nmmproj = {str(projector)!r}\n")
    assert sees_images(both)


def test_vision_on_llamacpp_without_a_projector_says_to_set_mmproj(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as error:
        load(tmp_path, "vision = true\n")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'genbot.toml'}: setting 'vision': ")
    assert "set mmproj to the vision model's projector GGUF file" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file (the llamacpp backend needs a GGUF projector file)"),
        (
            b"PK\x03\x04 not a projector",
            "not a GGUF file (it does not start with 'GGUF'); convert it or pick a .gguf",
        ),
    ],
)
def test_a_projector_that_is_not_a_gguf_file_is_refused_in_one_line(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "mmproj.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SettingsError) as error:
        Settings.load(environ={"GENBOT_MMPROJ": str(path)})
    assert str(error.value) == (
        f"environment variable GENBOT_MMPROJ: setting 'mmproj': {reason}, got {str(path)!r}"
    )


def test_only_the_llamacpp_backend_takes_a_projector(tmp_path: Path, projector: Path) -> None:
    with pytest.raises(SettingsError, match="setting 'mmproj': only the llamacpp backend"):
        load(tmp_path, f'backend = "openai"\nmmproj = {str(projector)!r}\n')


def test_a_named_model_takes_a_projector(tmp_path: Path, projector: Path) -> None:
    assert "mmproj" in MODEL_FIELDS  # a new projector needs a new model Streamer
    loaded = load(
        tmp_path,
        f'[models.eyes]\nbackend = "llamacpp"\nmmproj = {str(projector)!r}\n'
        '[models.blind]\nbackend = "llamacpp"\n',
    )
    assert sees_images(model_settings(loaded, "eyes"))
    assert not sees_images(model_settings(loaded, "blind"))
    with_top = dataclasses.replace(loaded, mmproj=str(projector))
    assert not sees_images(model_settings(with_top, "blind")), "a named model's own definition"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "[models.eyes]\nmmproj = '/no/such/mmproj.gguf'",
            "setting 'models.eyes.mmproj': no such file",
        ),
        (
            "[models.eyes]\nvision = true",
            "setting 'models.eyes.vision': the llamacpp backend sees images through",
        ),
    ],
)
def test_a_named_models_projector_is_checked_at_load(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load(tmp_path, table + "\n")


def test_the_backend_is_built_with_the_projector(projector: Path) -> None:
    pytest.importorskip("xllamacpp")
    settings = Settings().updated({"mmproj": str(projector)}, "test")
    backend = make_backend(settings)
    assert getattr(backend, "mmproj", None) == str(projector)
    assert getattr(make_backend(Settings()), "mmproj", "unset") is None
