"""``face-service``: serve the API, re-embed, migrate, export or import the gallery, manage API keys."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from service.auth.keys import (
    KeyStore,
    KeyStoreError,
    SqliteKeyStore,
    key_collections,
    known_collections,
    parse_collections,
    parse_scopes,
)
from service.command_hints import command_hint
from service.gallery.input_limits import check_name
from service.settings import DEFAULT_COLLECTION, Settings, load_settings

logger = logging.getLogger("service.cli")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # faiss announces each CPU-feature build it tries at INFO; only its problems matter here.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _fail(message: str) -> int:
    print(f"face-service: {message}", file=sys.stderr)
    return 1


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: `keys` commands must not pay for onnxruntime and faiss start-up.
    from service.api.app import create_app
    from service.api.http_server import serve
    from service.usecases.resources import STARTUP_ERRORS, build_resources

    updates = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = settings.model_copy(update=updates)
    try:
        resources = build_resources(settings)
    except STARTUP_ERRORS as exc:
        return _fail(f"cannot start: {exc}")
    # Timeouts, the connection limit and the log filters: service/api/http_server.py.
    if not serve(create_app(resources=resources), settings):
        return _fail("the server did not start (see the log above)")
    return 0


def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    from service.gallery.backends import store_options
    from service.gallery.reembed import reembed_gallery
    from service.gallery.store import GalleryError
    from service.packs.files import PackError
    from service.packs.loader import load_pack, resolve_pack_dir
    from service.pipeline.face_pipeline import FacePipeline
    from service.pipeline.runtime import RuntimeUnavailableError

    if args.pack:
        settings = settings.model_copy(update={"pack": args.pack})

    def progress(done: int, total: int) -> None:
        print(f"  re-embedded {done}/{total} faces", file=sys.stderr, flush=True)

    try:
        pack = load_pack(resolve_pack_dir(settings.models_dir, settings.pack))
        pipeline = FacePipeline.from_pack(pack, settings)
        report = reembed_gallery(
            settings.data_dir,
            pipeline,
            batch_size=args.batch_size,
            drop_faces_without_crop=args.drop_faces_without_crop,
            progress=progress,
            options=store_options(settings),
        )
    except (PackError, RuntimeUnavailableError, GalleryError) as exc:
        return _fail(f"reembed failed, gallery unchanged: {exc}")
    if report.reembedded == 0 and report.old_pack_id == report.new_pack_id:
        print(f"gallery already uses pack {report.new_pack_id}; nothing to do")
        return 0
    print(
        f"re-embedded {report.reembedded} faces from {report.old_pack_id} to {report.new_pack_id} "
        f"in {report.seconds:.1f} s (dropped {report.dropped} faces without a crop)"
    )
    return 0


def _check_shared_gallery(args: argparse.Namespace, settings: Settings) -> int:
    """``check`` on a PostgreSQL gallery: the pin and every face row (PostgreSQL guards its own pages)."""
    from service.gallery.backends import open_store, store_options
    from service.gallery.store import GalleryError

    if args.repair:
        return _fail(
            "check --repair works on the embedded SQLite file; a PostgreSQL gallery is repaired with "
            "PostgreSQL's own tools (restore from a backup), so nothing was changed"
        )
    try:
        opened = open_store(settings.data_dir, store_options(settings), must_exist=True)
    except GalleryError as exc:
        return _fail(f"check failed: {exc}")
    try:
        problem = opened.store.quick_check()
        bad = opened.store.bad_rows()
        counts = opened.store.counts()
    except GalleryError as exc:
        return _fail(f"check failed: {exc}")
    finally:
        opened.close()
    for row in bad:
        print(f"face #{row.index_id}: {row.reason}")
    if problem is not None:
        print(f"integrity: {problem}")
    if problem is None and not bad:
        print(f"shared gallery: ok ({counts.subjects} subjects, {counts.faces} faces)")
        return 0
    return 1


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """Report what keeps the gallery from opening; ``--repair`` moves it aside (deleting nothing)."""
    from service.gallery.repair import CheckReport, check_gallery, repair_gallery
    from service.gallery.store import GalleryError

    if settings.shared_gallery:
        return _check_shared_gallery(args, settings)

    def describe(report: CheckReport) -> None:
        if not report.exists:
            print(f"{report.path}: no gallery yet (one is created at the first start)")
        if report.file_problem is not None:
            print(f"{report.path}: unreadable: {report.file_problem}")
        if report.pin_problem is not None:
            print(f"{report.path}: {report.pin_problem}")
        for row in report.bad_rows:
            print(f"{report.path}: face #{row.index_id}: {row.reason}")
        if report.quarantined_before:
            print(f"{report.path}: {report.quarantined_before} faces kept in table quarantined_faces")
        if report.exists and report.ok:
            print(f"{report.path}: ok")

    try:
        if not args.repair:
            report = check_gallery(settings.data_dir)
            describe(report)
            if not report.ok:
                repair = command_hint("face-service", "check", "--repair", data_dir=settings.data_dir)
                print(f"run `{repair}` (service stopped) to move the bad parts aside")
            return 0 if report.ok else 1
        repaired = repair_gallery(settings.data_dir)
    except (GalleryError, OSError) as exc:
        return _fail(f"check failed, gallery unchanged: {exc}")
    describe(repaired.before)
    if repaired.moved_aside is not None:
        rows = ", ".join(f"{count} {table}" for table, count in repaired.salvaged.items())
        print(f"moved the unreadable file to {repaired.moved_aside} (kept); salvaged into a new file: {rows}")
    if repaired.quarantined:
        print(f"moved {repaired.quarantined} bad faces into table quarantined_faces (kept, not searched)")
    print("after repair:")
    describe(repaired.after)
    return 0 if repaired.after.ok else 1


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Copy the data dir's SQLite gallery and API keys into an empty PostgreSQL database, verified."""
    from pathlib import Path

    from service.gallery.migrate import EMPTY_DATABASE_ADVICE, MigrationError, migrate_to_postgres

    # The URL from FACE_DATABASE_URL keeps its password out of the shell history and the process list.
    url = args.to or (settings.database_url.get_secret_value() if settings.database_url is not None else "")
    if not url:
        return _fail("migrate needs the target database: --to postgresql://... (or FACE_DATABASE_URL)")
    data_dir = Path(args.data_dir) if args.data_dir is not None else settings.data_dir

    def progress(done: int, total: int) -> None:
        print(f"  copied {done}/{total} faces", file=sys.stderr, flush=True)

    try:
        report = migrate_to_postgres(
            data_dir, url, batch_size=args.batch_size, timeout_s=settings.db_timeout_s, progress=progress
        )
    except MigrationError as exc:
        return _fail(f"migrate failed: {exc}")
    print("\n".join(report.summary()))
    if not report.ok:
        problems = "".join(f"\n  {line}" for line in report.differences)
        return _fail(
            f"verification FAILED: the copy differs from the source:{problems}\n"
            f"the source is unchanged; {EMPTY_DATABASE_ADVICE}"
        )
    print(
        "verified: the database holds exactly the source's gallery and keys (the source is unchanged); "
        "start the service with FACE_DATABASE_URL set to it"
    )
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write the gallery (SQLite: the service stopped; PostgreSQL: live) as a portable archive."""
    from pathlib import Path

    from service.gallery.backends import open_store, store_options
    from service.gallery.store import GalleryError
    from service.usecases.gallery_archive import export_archive_sync

    out = Path(args.out)
    partial = out.with_name(f".{out.name}.partial")
    try:
        opened = open_store(settings.data_dir, store_options(settings), must_exist=True)
    except GalleryError as exc:
        return _fail(f"export failed: {exc}")
    try:
        pin = opened.store.pinned_pack()
        if pin is None:
            return _fail("export failed: the gallery is not pinned to a pack (nothing was ever enrolled)")
        with partial.open("wb") as handle:  # renamed once complete: no half archive under the name
            summary = export_archive_sync(opened.store, pin, handle)
        partial.replace(out)
    except (GalleryError, OSError) as exc:
        partial.unlink(missing_ok=True)
        return _fail(f"export failed: {exc}")
    finally:
        opened.close()
    print(
        f"exported {summary.subjects} subjects, {summary.faces} faces ({summary.crops} crops) of pack "
        f"{pin.pack_id} to {out}"
    )
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import an archive into the gallery of FACE_PACK (re-embedded when it is another pack's)."""
    from pathlib import Path

    from service.gallery.gallery import Gallery
    from service.gallery.store import GalleryError
    from service.packs.files import PackError
    from service.packs.loader import load_pack, resolve_pack_dir
    from service.pipeline.face_pipeline import FacePipeline
    from service.pipeline.runtime import RuntimeUnavailableError
    from service.usecases.errors import UseCaseError
    from service.usecases.gallery_archive import ImportOptions, OnConflict, import_archive_sync

    options = ImportOptions(
        on_conflict=OnConflict(args.on_conflict),
        skip_faces_without_crop=args.skip_faces_without_crop,
        on_conflict_field="--on-conflict",
        skip_field="--skip-faces-without-crop",
    )
    try:
        pipeline = FacePipeline.from_pack(
            load_pack(resolve_pack_dir(settings.models_dir, settings.pack)), settings
        )
        with Gallery.open(settings.data_dir, pipeline.pack_id, pipeline.embedding_size, settings) as gallery:
            report = import_archive_sync(gallery, pipeline, Path(args.file), options)
    except UseCaseError as exc:
        return _fail(f"import failed, gallery unchanged: {exc.detail}")
    except (PackError, RuntimeUnavailableError, GalleryError, OSError) as exc:
        return _fail(f"import failed, gallery unchanged: {exc}")
    how = (
        "embeddings as they are"
        if report.reembedded == 0 and report.source_pack.pack_id == report.pack.pack_id
        else f"re-embedded from {report.source_pack.pack_id}"
    )
    notes = [
        f"{count} {what}"
        for count, what in (
            (report.skipped_subjects, "subjects skipped (ids taken)"),
            (report.skipped_faces, "faces skipped (ids taken, or of a skipped subject)"),
            (report.skipped_without_crop, "faces skipped (no crop to re-embed)"),
            (len(report.new_subject_ids), "subjects got new ids"),
            (len(report.new_face_ids), "faces got new ids"),
        )
        if count
    ]
    print(
        f"imported {report.subjects} subjects, {report.faces} faces into pack {report.pack.pack_id} ({how}) "
        f"in {report.seconds:.1f} s" + "".join(f"; {note}" for note in notes)
    )
    return 0


def _add_archive_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export",
        help="write the gallery as a portable archive: subjects, faces, embeddings, crops, checksums "
        "(SQLite: service stopped)",
    )
    export.add_argument("--out", required=True, help="the archive to write (a .tar)")
    export.set_defaults(handler=cmd_export)
    _add_collection_argument(export)
    imports = commands.add_parser(
        "import",
        help="import an archive into the gallery, verified, all or nothing (another pack's archive is "
        "re-embedded from its crops with FACE_PACK; SQLite: service stopped)",
    )
    imports.add_argument("file", help="an archive `face-service export` wrote")
    imports.add_argument(
        "--on-conflict",
        choices=["refuse", "skip", "new-ids"],
        default="refuse",
        help="ids the gallery holds already: refuse (default; nothing imported), skip (leave those subjects "
        "and faces out), new-ids (give them new ids)",
    )
    imports.add_argument(
        "--skip-faces-without-crop",
        action="store_true",
        help="re-embedding: leave faces without a crop out instead of refusing the import",
    )
    imports.set_defaults(handler=cmd_import)
    _add_collection_argument(imports)


def _add_migrate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="copy the data dir's SQLite gallery and API keys into an empty PostgreSQL database, verified "
        "(service stopped)",
    )
    migrate.add_argument("--to", help="the target database, postgresql://... (default: FACE_DATABASE_URL)")
    migrate.add_argument("--data-dir", help="the data dir to copy from (default: FACE_DATA_DIR)")
    migrate.add_argument("--batch-size", type=int, default=500, help="faces per transaction (default: 500)")
    migrate.set_defaults(handler=cmd_migrate)


def _keys_failure(settings: Settings, exc: Exception) -> int:
    """A SQLite key file's own error, told as the damaged store it means (a database store says so itself)."""
    from service.auth.keys import KeyStoreCorruptError

    path = SqliteKeyStore.in_data_dir(settings.data_dir).path
    return _fail(str(KeyStoreCorruptError.in_file(path, str(exc))))


def _open_key_store(settings: Settings, *, checked: bool) -> KeyStore:
    """The configured key store (FACE_DATABASE_URL: the shared database); ``checked``: refused
    (KeyStoreCorruptError) when damaged, as the server would refuse to start on it."""
    from service.auth.stores import open_key_store

    store = open_key_store(settings)
    if checked:
        try:
            store.ensure_schema()
            store.check()
        except BaseException:
            store.close()
            raise
    return store


def _run_keys_command(settings: Settings, command: Callable[[KeyStore], int], *, checked: bool) -> int:
    """Run ``command`` on the key store; every failure is one line on stderr and exit status 1."""
    from service.postgres.migrations import SchemaTooNewError
    from service.postgres.pool import DatabaseUnavailableError

    try:
        store = _open_key_store(settings, checked=checked)
        try:
            return command(store)
        finally:
            store.close()
    except (KeyStoreError, DatabaseUnavailableError, SchemaTooNewError) as exc:
        return _fail(str(exc))
    except (sqlite3.Error, OSError) as exc:
        return _keys_failure(settings, exc)


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        check_name(args.name)  # the rule POST /v1/keys applies: no control, bidi or surrogate characters
    except ValueError as exc:
        return _fail(f"--name: {exc}")
    try:
        scopes = parse_scopes(args.scopes)
        # The rule POST /v1/keys applies: configured collections (FACE_COLLECTIONS) and default only.
        collections = key_collections(
            scopes,
            None if args.collections is None else parse_collections(args.collections),
            known_collections(settings),
        )
    except KeyStoreError as exc:
        return _fail(str(exc))

    def create(store: KeyStore) -> int:
        created = store.create(scopes, name=args.name, collections=collections)
        print(f"key id: {created.record.id}")
        print(f"scopes: {','.join(sorted(scopes))}")
        print(f"collections: {_collections_text(created.record.collections)}")
        print(f"key:    {created.key}")
        print("(shown once: store it now)")
        return 0

    return _run_keys_command(settings, create, checked=True)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    def show(store: KeyStore) -> int:
        keys = store.list(include_revoked=args.all)
        print(f"{'id':<14}{'scopes':<20}{'created':<27}{'status':<37}{'collections':<24}name")
        for key in keys:
            status = "active" if key.active else f"revoked {key.revoked_at}"
            print(
                f"{key.id:<14}{','.join(sorted(key.scopes)):<20}{key.created_at:<27}{status:<37}"
                f"{_collections_text(key.collections):<24}{key.name}"
            )
        return 0

    return _run_keys_command(settings, show, checked=False)


def _collections_text(collections: frozenset[str] | None) -> str:
    return "(all)" if collections is None else ",".join(sorted(collections))


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    def revoke(store: KeyStore) -> int:
        record = store.revoke(args.key_id)
        print(f"revoked {record.id} ({record.revoked_at})")
        return 0

    return _run_keys_command(settings, revoke, checked=True)


Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face-service", description="Face verification/identification service (settings: FACE_* env)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", help="override FACE_HOST")
    serve.add_argument("--port", type=int, help="override FACE_PORT")
    serve.set_defaults(handler=cmd_serve)

    reembed = commands.add_parser(
        "reembed", help="re-embed the gallery's stored crops with another pack (service stopped)"
    )
    reembed.add_argument("--pack", help="the pack to switch to (default: FACE_PACK)")
    reembed.add_argument("--batch-size", type=int, default=64)
    reembed.add_argument(
        "--drop-faces-without-crop",
        action="store_true",
        help="delete faces enrolled without a crop instead of failing",
    )
    reembed.set_defaults(handler=cmd_reembed)
    _add_collection_argument(reembed)

    check = commands.add_parser(
        "check", help="check the gallery file for damage (service stopped); --repair moves it aside"
    )
    check.add_argument(
        "--repair",
        action="store_true",
        help="quarantine bad faces and salvage an unreadable file into a new one (nothing is deleted)",
    )
    check.set_defaults(handler=cmd_check)
    _add_collection_argument(check)
    _add_migrate_parser(commands)
    _add_archive_parsers(commands)

    keys = commands.add_parser("keys", help="manage API keys in FACE_DATA_DIR")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key (printed once)")
    create.add_argument(
        "--scopes", nargs="+", required=True, help="read, enroll, admin (space or comma separated)"
    )
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument(
        "--collections",
        nargs="+",
        help="limit the key to these collections (space or comma separated: default and FACE_COLLECTIONS' "
        "names; not with admin); without it the key may use every collection",
    )
    create.set_defaults(handler=cmd_keys_create)
    listing = key_commands.add_parser("list", help="list keys (ids and scopes, never the keys)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(handler=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=cmd_keys_revoke)
    return parser


def _add_collection_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help="the collection's gallery (a FACE_COLLECTIONS name, with its pack; default: the default one)",
    )


def _in_collection(args: argparse.Namespace, settings: Settings) -> Settings | str:
    """``settings`` for the gallery of ``--collection`` (where the service keeps it), or why not."""
    name = getattr(args, "collection", DEFAULT_COLLECTION)
    if name == DEFAULT_COLLECTION:
        return settings
    if name not in settings.collections:
        declared = ", ".join([DEFAULT_COLLECTION, *sorted(settings.collections)])
        return f"--collection {name!r} is not declared in FACE_COLLECTIONS (declared: {declared})"
    from service.usecases.resources import collection_settings

    return collection_settings(settings, name, settings.collections[name])


def _settings_problem(error: ValidationError) -> str:
    # One line per bad variable; the offending values are not echoed (one may be FACE_API_KEY).
    names = ("FACE_" + "_".join(str(part) for part in item["loc"]).upper() for item in error.errors())
    problems = "; ".join(f"{name}: {item['msg']}" for name, item in zip(names, error.errors(), strict=True))
    return f"invalid settings: {problems}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as error:
        return _fail(_settings_problem(error))
    _configure_logging(settings)
    scoped = _in_collection(args, settings)
    if isinstance(scoped, str):
        return _fail(scoped)
    handler: Command = args.handler
    return handler(args, scoped)


if __name__ == "__main__":
    sys.exit(main())
