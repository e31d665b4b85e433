"""Ordered schema migrations, each recorded by name in `_migrations` and applied on every open.

Add a change as a new function at the end, decorated with `@migration`; never edit one that has
shipped. Each runs in its own transaction together with its record, so a crash leaves the
database at the previous version.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


def applied(db: sqlite_utils.Database) -> list[str]:
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db.query("select name from _migrations order by rowid")]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    conn = db.conn
    conn.execute("create table if not exists _migrations (name text primary key, applied_at text not null)")
    done = set(applied(db))
    ran = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have applied it while we waited for the lock.
            if conn.execute("select 1 from _migrations where name = ?", (fn.__name__,)).fetchone():
                conn.execute("COMMIT")
                continue
            fn(db)
            conn.execute(
                "insert into _migrations (name, applied_at) values (?, ?)",
                (fn.__name__, _dt.datetime.now(_dt.UTC).isoformat()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        ran.append(fn.__name__)
    return ran


@migration
def m001_initial(db):
    db.executescript(
        """
        create table datasets (
            id integer primary key,
            name text not null unique,
            kind text not null default 'imitation',      -- imitation | subset
            status text not null default 'ready',        -- importing | ready
            format text,
            source text,                                 -- file(s) or parent dataset it came from
            meta text not null default '{}',             -- json: provenance, subset spec, ...
            created_at text not null
        );
        create table examples (
            id integer primary key,
            dataset_id integer not null references datasets(id) on delete cascade,
            idx integer not null,                        -- position in the source
            source text,                                 -- file name or upstream source label
            conversation text not null,                  -- json [{role, content}]
            user_text text not null,                     -- user turns joined, for search/coverage
            assistant_text text not null,
            n_tokens integer not null,
            content_hash text not null,
            meta text not null default '{}',
            unique (dataset_id, content_hash)
        );
        create index examples_dataset on examples(dataset_id, idx);

        create table subset_members (
            subset_id integer not null references datasets(id) on delete cascade,
            example_id integer not null references examples(id) on delete cascade,
            primary key (subset_id, example_id)
        );

        create table suites (
            id integer primary key,
            name text not null unique,
            kind text not null,                          -- qa | mc | code | prompts
            status text not null default 'ready',
            format text,
            source text,
            meta text not null default '{}',
            created_at text not null
        );
        create table items (
            id integer primary key,
            suite_id integer not null references suites(id) on delete cascade,
            idx integer not null,
            key text,                                    -- upstream id (task_id, ...), if any
            prompt text not null,
            task text not null default 'all',
            gold text not null default '[]',             -- json: answer aliases / correct letter
            choices text,                                -- json list for mc
            tests text,                                  -- code: test source
            entry_point text,
            content_hash text not null,
            meta text not null default '{}',
            unique (suite_id, content_hash)
        );
        create index items_suite on items(suite_id, idx);
        create index items_task on items(suite_id, task);

        create table models (
            id integer primary key,
            name text not null unique,
            kind text not null,                          -- hf | packaged | openai | adapter | recorded
            spec text not null default '{}',             -- json; never holds a secret
            created_at text not null
        );

        create table jobs (
            id integer primary key,
            name text not null,
            kind text not null,                          -- finetune | generate | coverage | collect | ...
            status text not null default 'queued',
            pid integer,
            pid_started text,                            -- process start time, guards pid reuse
            lane text,                                   -- jobs in one lane run one at a time
            step integer not null default 0,
            total_steps integer,
            loss real,
            config text not null default '{}',
            error text,
            parent_id integer references jobs(id),
            created_at text not null,
            started_at text,
            finished_at text,
            updated_at text
        );
        create table job_events (
            id integer primary key,
            job_id integer not null references jobs(id) on delete cascade,
            time text not null,
            step integer,
            total_steps integer,
            loss real,
            lr real,
            tokens_per_s real,
            eta_s real,
            message text,
            data text
        );
        create index job_events_job on job_events(job_id, id);

        create table generations (
            id integer primary key,
            model text not null,                         -- model name in the registry
            fingerprint text not null,                   -- model fingerprint (weights/adapter/endpoint)
            item_id integer not null references items(id) on delete cascade,
            prompt text not null,                        -- the rendered prompt sent
            decoding text not null default '{}',         -- json: temperature, max_new_tokens, stop, style...
            cache_key text not null unique,              -- hash(fingerprint, prompt, decoding)
            output text not null,
            meta text not null default '{}',             -- json: usage, latency, prompt style...
            created_at text not null
        );
        create index generations_item on generations(item_id, model);
        create index generations_model on generations(model);

        create table scores (
            id integer primary key,
            generation_id integer not null references generations(id) on delete cascade,
            metric text not null,
            version text not null,
            inputs_hash text not null,
            value real,                                  -- null when it could not be computed
            meta text not null default '{}',
            created_at text not null,
            unique (generation_id, metric, inputs_hash)
        );
        create index scores_metric on scores(metric);
        """
    )


@migration
def m030_marks_ratings(db):
    # Human judgements live apart from automatic scores: a rescore never touches them.
    db.executescript(
        """
        create table marks (
            id integer primary key,
            generation_id integer not null references generations(id) on delete cascade,
            mark text not null check (mark in ('correct', 'incorrect', 'unsure')),
            rater text not null default '',
            created_at text not null,
            updated_at text not null,
            unique (generation_id, rater)
        );
        create table pairwise_ratings (
            id integer primary key,
            item_id integer not null references items(id) on delete cascade,
            model text not null,
            teacher text not null,
            generation_id integer not null references generations(id) on delete cascade,
            teacher_generation_id integer not null references generations(id) on delete cascade,
            a_is_teacher integer not null,               -- the blind order shown to the rater
            seed integer not null,
            choice text not null check (choice in ('A', 'B', 'tie')),
            outcome text not null check (outcome in ('model', 'teacher', 'tie')),
            rater text not null default '',
            created_at text not null,
            unique (generation_id, teacher_generation_id, rater)
        );
        create index pairwise_ratings_model on pairwise_ratings(model, teacher);
        """
    )


@migration
def m040_models_request_cache(db):
    # Generations not tied to a suite item (teacher collection from a prompts file, synthetic
    # QA requests) are cached here under the same key rule as `generations`, so a killed
    # collection rerun asks nothing twice.
    db.executescript(
        """
        create table request_cache (
            id integer primary key,
            model text not null,
            fingerprint text not null,
            prompt text not null,                        -- the rendered prompt (or chat messages json)
            decoding text not null default '{}',
            cache_key text not null unique,              -- hash(fingerprint, prompt, decoding)
            output text not null,
            meta text not null default '{}',
            created_at text not null
        );
        create index request_cache_model on request_cache(model);
        """
    )


@migration
def m020_coverage(db):
    # Coverage results (core.coverage), keyed by a digest of every input so a change recomputes.
    db.executescript(
        """
        create table coverage_clusterings (
            id integer primary key,
            key text not null unique,                    -- digest of data contents, model, mode, k, seed
            dataset_id integer not null references datasets(id) on delete cascade,
            model_key text not null,
            mode text not null,                          -- user | conversation
            n_clusters integer not null,
            seed integer not null,
            data_hash text not null,
            clusters text not null,                      -- json: size, terms, samples, sources
            created_at text not null
        );
        create table coverage_cluster_members (
            clustering_id integer not null references coverage_clusterings(id) on delete cascade,
            example_id integer not null references examples(id) on delete cascade,
            cluster integer not null,
            primary key (clustering_id, example_id)
        );
        create index coverage_cluster_members_cluster on coverage_cluster_members(clustering_id, cluster);
        create table coverage_runs (
            id integer primary key,
            key text not null unique,
            dataset_id integer not null references datasets(id) on delete cascade,
            suite_id integer not null references suites(id) on delete cascade,
            data text not null,
            suite text not null,
            model_key text not null,
            model_name text not null,
            mode text not null,
            threshold real not null,
            k integer not null,
            n_clusters integer not null,
            seed integer not null,
            clustering_id integer references coverage_clusterings(id) on delete set null,
            data_hash text not null,
            suite_hash text not null,
            summary text not null,                       -- json: the whole suite's record
            clusters text not null,                      -- json: clusters with the tasks they serve
            created_at text not null
        );
        create index coverage_runs_pair on coverage_runs(dataset_id, suite_id);
        create table coverage_items (
            run_id integer not null references coverage_runs(id) on delete cascade,
            item_id integer not null references items(id) on delete cascade,
            task text not null,
            max_similarity real not null,
            n_above integer not null,
            longest_ngram integer not null,
            contaminated integer not null,
            answer_leak integer not null,
            answer_in_data integer not null,
            neighbors text not null,                     -- json [{example_id, similarity, source, text, ...}]
            primary key (run_id, item_id)
        );
        create table coverage_tasks (
            run_id integer not null references coverage_runs(id) on delete cascade,
            task text not null,
            items integer not null,
            support real not null,
            mean_max_similarity real not null,
            examples_served integer not null,
            contaminated integer not null,
            answer_leak integer not null,
            by_source text not null,
            primary key (run_id, task)
        );
        """
    )


@migration
def m010_ingest_fts(db):
    # Full-text search (the Data screen, core.data.search) over examples and items. External-content
    # FTS5 tables store only the index, not a second copy of the text; triggers keep them in
    # step with every insert, delete and text update. Statements run one by one on the open
    # transaction: `executescript` would COMMIT it first and break the migration's atomicity.
    conn = db.conn
    for table, cols in (("examples", ("user_text", "assistant_text")), ("items", ("prompt",))):
        fts = f"{table}_fts"
        col_list = ", ".join(cols)
        new_vals = ", ".join(f"new.{c}" for c in cols)
        old_vals = ", ".join(f"old.{c}" for c in cols)
        conn.execute(
            f"create virtual table {fts} using fts5({col_list}, content='{table}', content_rowid='id',"
            " tokenize='unicode61 remove_diacritics 2')"
        )
        conn.execute(
            f"create trigger {fts}_ai after insert on {table} begin"
            f" insert into {fts}(rowid, {col_list}) values (new.id, {new_vals}); end"
        )
        conn.execute(
            f"create trigger {fts}_ad after delete on {table} begin"
            f" insert into {fts}({fts}, rowid, {col_list}) values ('delete', old.id, {old_vals}); end"
        )
        # Only a change to the indexed text re-indexes (moving a row between datasets does not).
        conn.execute(
            f"create trigger {fts}_au after update of {col_list} on {table} begin"
            f" insert into {fts}({fts}, rowid, {col_list}) values ('delete', old.id, {old_vals});"
            f" insert into {fts}(rowid, {col_list}) values (new.id, {new_vals}); end"
        )
        conn.execute(f"insert into {fts}({fts}) values ('rebuild')")


@migration
def m011_ingest_fts_bulk(db):
    # FTS5 flushes its pending index at every statement savepoint, so a per-row trigger costs an
    # import several times what one bulk `insert ... select` does. Rows an import is staging
    # (parent status 'importing') are therefore skipped by the triggers; the importer indexes each chunk in bulk in the transaction that writes it, and
    # removes the index entries itself when it drops staged rows. So every row stays indexed; a
    # missing parent (cascade delete of a ready dataset) lets the delete trigger fire.
    conn = db.conn
    for table, parent, fk, cols in (
        ("examples", "datasets", "dataset_id", ("user_text", "assistant_text")),
        ("items", "suites", "suite_id", ("prompt",)),
    ):
        fts = f"{table}_fts"
        col_list = ", ".join(cols)
        new_vals = ", ".join(f"new.{c}" for c in cols)
        old_vals = ", ".join(f"old.{c}" for c in cols)
        live = "coalesce((select status from {parent} where id = {row}.{fk}), 'ready') != 'importing'"
        for suffix in ("ai", "ad", "au"):
            conn.execute(f"drop trigger if exists {fts}_{suffix}")
        conn.execute(
            f"create trigger {fts}_ai after insert on {table}"
            f" when {live.format(parent=parent, row='new', fk=fk)} begin"
            f" insert into {fts}(rowid, {col_list}) values (new.id, {new_vals}); end"
        )
        conn.execute(
            f"create trigger {fts}_ad after delete on {table}"
            f" when {live.format(parent=parent, row='old', fk=fk)} begin"
            f" insert into {fts}({fts}, rowid, {col_list}) values ('delete', old.id, {old_vals}); end"
        )
        conn.execute(
            f"create trigger {fts}_au after update of {col_list} on {table}"
            f" when {live.format(parent=parent, row='old', fk=fk)} begin"
            f" insert into {fts}({fts}, rowid, {col_list}) values ('delete', old.id, {old_vals});"
            f" insert into {fts}(rowid, {col_list}) values (new.id, {new_vals}); end"
        )


@migration
def m050_tui_examples_tokens_index(db):
    # Counting a dataset's examples and summing its tokens (`mirage ls datasets`, the TUI's Data
    # screen) read every row: n_tokens sits after the long text columns, so SQLite walked each
    # row's overflow pages (0.8 s for 100k conversations). A covering index answers it from ~2 MB.
    db.conn.execute("create index if not exists examples_dataset_tokens on examples(dataset_id, n_tokens)")


@migration
def m012_ingest_fts_detail_none(db):
    # Examples' index without token positions (detail='none'): it indexes in bulk less than half as
    # long and is smaller. Searches are words (and word prefixes)
    # that must all occur, which needs no positions; snippets re-read the row's text. The
    # triggers of m011 stay attached to `examples` and write to the new table under the same name.
    conn = db.conn
    conn.execute("drop table if exists examples_fts")
    conn.execute(
        "create virtual table examples_fts using fts5(user_text, assistant_text, content='examples',"
        " content_rowid='id', tokenize='unicode61 remove_diacritics 2', detail='none')"
    )
    conn.execute(
        "insert into examples_fts(rowid, user_text, assistant_text) select e.id, e.user_text, e.assistant_text"
        " from examples e where coalesce((select status from datasets d where d.id = e.dataset_id), 'ready')"
        " != 'importing'"
    )


@migration
def m060_ingest_fts_backlog(db):
    # Indexing is the largest single cost of an import, so it happens after publishing: an import
    # publishes its rows with their ids in `fts_backlog` and core.data.search indexes the backlog
    # afterwards (in the background for a large import, at once for a small one, and before any
    # search answers). A row still waiting has no
    # index entries, so the delete and update triggers must not send FTS5 a 'delete' for it (that
    # corrupts an external-content index); they drop its backlog entry instead.
    conn = db.conn
    conn.execute("create table fts_backlog (example_id integer primary key)")
    live = "coalesce((select status from datasets where id = {row}.dataset_id), 'ready') != 'importing'"
    indexed = "not exists (select 1 from fts_backlog where example_id = old.id)"
    for suffix in ("ad", "au"):
        conn.execute(f"drop trigger if exists examples_fts_{suffix}")
    conn.execute(
        f"create trigger examples_fts_ad after delete on examples when {live.format(row='old')} begin"
        " insert into examples_fts(examples_fts, rowid, user_text, assistant_text)"
        f" select 'delete', old.id, old.user_text, old.assistant_text where {indexed};"
        " delete from fts_backlog where example_id = old.id; end"
    )
    conn.execute(
        "create trigger examples_fts_au after update of user_text, assistant_text on examples"
        f" when {live.format(row='old')} and {indexed} begin"
        " insert into examples_fts(examples_fts, rowid, user_text, assistant_text)"
        " values ('delete', old.id, old.user_text, old.assistant_text);"
        " insert into examples_fts(rowid, user_text, assistant_text) values (new.id, new.user_text, new.assistant_text);"
        " end"
    )
    # Rows an older version was staging were indexed chunk by chunk; from now on staged rows are
    # not. Un-index them and queue them, so publishing or dropping them stays consistent.
    staged = "select id from examples where dataset_id in (select id from datasets where status = 'importing')"
    conn.execute(
        "insert into examples_fts(examples_fts, rowid, user_text, assistant_text)"
        f" select 'delete', id, user_text, assistant_text from examples where id in ({staged})"
    )
    conn.execute(f"insert into fts_backlog (example_id) {staged}")


@migration
def m073_token_counts(db):
    # Exact token counts: the base's tokenizer over the rendered training text (core.finetune.tokens),
    # computed on demand and kept by what they depend on, so a subset's budget and a finetune's
    # --tokens read the same number. `n_tokens` is the whole rendering; `first_label` the index of
    # the first trained (assistant) token, or null when there is none, so a count under any
    # max_length follows without encoding again.
    # The headless blind-rating flow (`mirage rate next|submit`) shares this migration: a pair is
    # issued with its sides fixed and an opaque id, so a remote rater never sees the model names.
    db.executescript(
        """
        create table token_counts (
            content_hash text not null,
            tokenizer text not null,
            n_tokens integer not null,
            first_label integer,
            primary key (content_hash, tokenizer)
        ) without rowid;
        create table rating_pairs (
            id text primary key,
            item_id integer not null references items(id) on delete cascade,
            model text not null,
            teacher text not null,
            generation_id integer not null references generations(id) on delete cascade,
            teacher_generation_id integer not null references generations(id) on delete cascade,
            a_is_teacher integer not null,
            seed integer not null,
            rater text not null default '',
            status text not null default 'open' check (status in ('open', 'rated', 'skipped')),
            created_at text not null,
            unique (generation_id, teacher_generation_id, rater)
        );
        """
    )


@migration
def m070_score_roles(db):
    # A style score is measured against one teacher's output: the teacher goes with the row, so
    # reads can ask for the teacher in use and a report never mixes two (rows from before this
    # column carry it in their meta). `score_roles` records the roles and decodings a suite was
    # last scored with, so a later `report` shows them without being told again.
    conn = db.conn
    conn.execute("alter table scores add column teacher text")
    conn.execute("update scores set teacher = json_extract(meta, '$.teacher') where json_valid(meta)")
    conn.execute("create index scores_generation_teacher on scores(generation_id, teacher)")
    conn.execute(
        """create table score_roles (
            suite_id integer primary key references suites(id) on delete cascade,
            teacher text,
            base text,
            decodings text not null default '{}',   -- json: model -> the decoding its scores read
            updated_at text not null
        )"""
    )
    # A suite scored before this migration against exactly one teacher was scored with that one.
    conn.execute(
        "insert into score_roles (suite_id, teacher, updated_at)"
        " select i.suite_id, min(s.teacher), ? from scores s join generations g on g.id = s.generation_id"
        " join items i on i.id = g.item_id where s.teacher is not null"
        " group by i.suite_id having count(distinct s.teacher) = 1",
        [_dt.datetime.now(_dt.UTC).isoformat()],
    )
    # Aggregates (bootstrap intervals over thousands of scores) are cached under a hash of their
    # inputs; `score_state.version` moves on every change to `scores`, so that hash includes it.
    conn.execute("create table score_state (id integer primary key check (id = 1), version integer not null)")
    conn.execute("insert into score_state (id, version) values (1, 0)")
    for event in ("insert", "delete", "update"):
        conn.execute(
            f"create trigger scores_state_{event} after {event} on scores begin"
            " update score_state set version = version + 1 where id = 1; end"
        )
    conn.execute(
        """create table aggregate_cache (
            key text primary key,
            suite_id integer not null references suites(id) on delete cascade,
            value text not null,
            created_at text not null
        )"""
    )
    conn.execute("create index aggregate_cache_suite on aggregate_cache(suite_id, created_at)")


@migration
def m071_imported_results(db):
    # Another tool's own per-sample scores (lm-eval's exact_match, inspect's match, promptfoo's
    # pass), kept apart from `scores`: those are mirage's, keyed by metric version and inputs and
    # recomputed when stale; these are facts read from a file, never recomputed, named
    # `tool:metric` and set beside mirage's figure (core.scores.imported).
    db.conn.execute(
        """create table imported_scores (
            id integer primary key,
            generation_id integer not null references generations(id) on delete cascade,
            metric text not null,                        -- tool:metric, e.g. lm_eval:exact_match
            value real,                                  -- null when the tool gave none
            meta text not null default '{}',             -- json: the tool's raw value, file, sample id
            created_at text not null,
            unique (generation_id, metric)
        )"""
    )
    db.conn.execute("create index imported_scores_metric on imported_scores(metric)")
