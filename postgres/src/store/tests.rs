//! Tests of the store's statements against a real Postgres.

mod plan_tests {
    use crate::sql;
    use crate::testing::TestDatabase;
    use sqlx::AssertSqlSafe;

    /// Every stream read stays on the `(tenant_id, stream_id, stream_version)` index,
    /// in custom and in generic plans, on a table whose statistics tempt the
    /// planner into a bitmap scan and a sort (a few big streams); the log
    /// read stays on the `(tenant_id, transaction_id, position)` index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_keep_their_index_plans() {
        let db = TestDatabase::new().await;
        let pool = db.pool();
        for (stream, n) in [("big-a", 60_000i64), ("big-b", 30_000), ("small", 1_000)] {
            sqlx::query(
                "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
                 SELECT gen_random_uuid(), $1, g, 'test.scored', 1,
                        jsonb_build_object('score', g % 100, 'model', 'gbm-2024-01',
                                           'reasons', jsonb_build_array('opened 3 emails', 'visited the pricing page'))
                   FROM generate_series(1, $2) g",
            )
            .bind(stream)
            .bind(n)
            .execute(pool)
            .await
            .expect("insert a stream");
        }
        sqlx::query("ANALYZE annals_events")
            .execute(pool)
            .await
            .expect("analyze");
        let mut conn = pool.acquire().await.expect("a connection");
        let stream_index = "Index Scan using annals_events_stream_version_key";
        let log_index = "Index Scan using annals_events_global_order";
        // the arguments and index of every statement that reads events
        let reads = |file: &str| match file {
            "read_stream.sql" | "read_payloads.sql" | "read_full_payloads.sql" => {
                Some(("('big-a', 1, NULL, 'default')", stream_index))
            }
            "load_snapshot_and_events.sql" => Some(("('lead', 'big-a', 'default')", stream_index)),
            "read_log.sql" => Some(("('0', 0, 1000, 'default')", log_index)),
            "read_log_every.sql" => Some(("('0', 0, 1000)", log_index)),
            _ => None,
        };
        let statements: Vec<_> = sql::ALL
            .iter()
            .filter(|(file, _)| file.starts_with("read_") || file.starts_with("load_"))
            .filter(|(file, _)| {
                !matches!(
                    *file,
                    "read_event.sql" | "read_event_every.sql" | "load_snapshot.sql"
                )
            })
            .map(|(file, sql)| {
                let (args, index) =
                    reads(file).unwrap_or_else(|| panic!("{file}: no plan check for this read"));
                (*file, *sql, args, index)
            })
            .collect();
        assert_eq!(statements.len(), 6, "every stream and log read is checked");
        for (name, sql, args, index) in statements {
            sqlx::raw_sql(AssertSqlSafe(format!("PREPARE plan_check AS {sql}")))
                .execute(&mut *conn)
                .await
                .expect("prepare");
            for mode in ["force_custom_plan", "force_generic_plan"] {
                sqlx::raw_sql(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                    .execute(&mut *conn)
                    .await
                    .expect("set the plan mode");
                let plan: Vec<String> =
                    sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE plan_check{args}")))
                        .fetch_all(&mut *conn)
                        .await
                        .expect("explain");
                let plan = plan.join("\n");
                assert!(
                    plan.contains(index),
                    "{name} ({mode}) does not read through its index:\n{plan}"
                );
                assert!(
                    !plan.contains("Bitmap Heap Scan on annals_events")
                        && !plan.contains("Seq Scan on annals_events"),
                    "{name} ({mode}) scans the events another way:\n{plan}"
                );
            }
            sqlx::raw_sql("DEALLOCATE plan_check; RESET plan_cache_mode")
                .execute(&mut *conn)
                .await
                .expect("deallocate");
        }
    }
}

mod key_tests {
    use annals_core::store::Versioned;
    use annals_core::testing::events::{Created, Scored, TestEvent};
    use annals_core::{EventStoreExt, ExpectedVersion, Metadata};

    use crate::testing::TestDatabase;
    use crate::PgEventStore;

    fn events() -> Vec<TestEvent> {
        vec![
            TestEvent::Created(Created {
                name: "Ada".to_owned(),
                email: None,
            }),
            TestEvent::Scored(Scored {
                score: 80,
                confidence: 0.9,
                model: "gbm".to_owned(),
            }),
            TestEvent::Note("called back".to_owned()),
        ]
    }

    /// A store maps the schema keys of the types it registered from start-up
    /// on (no fallback), learns the others from its first full read, and
    /// reads a key it knows two pairs for in full every time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lean_reads_map_registered_keys_and_learn_the_others() {
        let db = TestDatabase::new().await;
        let pool = db.pool().clone();
        let registered = PgEventStore::builder(pool.clone())
            .register::<TestEvent>()
            .build()
            .await
            .expect("build a registered store");
        let written = events();
        registered
            .append_events(
                "lead-1",
                ExpectedVersion::NoStream,
                &written,
                &Metadata::new(),
            )
            .await
            .expect("append");
        // a version-1 payload of test.scored, upcast on read
        sqlx::query(
            "INSERT INTO annals_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
             VALUES (gen_random_uuid(), 'lead-1', 4, 'test.scored', 1, '{\"points\": 40}')",
        )
        .execute(&pool)
        .await
        .expect("insert a version-1 event");
        let mut expected: Vec<Versioned<TestEvent>> = (1..)
            .zip(written)
            .map(|(stream_version, event)| Versioned {
                stream_version,
                event,
            })
            .collect();
        expected.push(Versioned {
            stream_version: 4,
            event: TestEvent::Scored(Scored {
                score: 40,
                confidence: 0.5,
                model: "unknown".to_owned(),
            }),
        });

        let read = registered
            .read_stream_payloads_as::<TestEvent>("lead-1", ..)
            .await
            .expect("read");
        assert_eq!(read, expected);
        assert_eq!(
            registered.keys.misses(),
            0,
            "registered keys need no fallback"
        );

        let unregistered = PgEventStore::builder(pool.clone())
            .build()
            .await
            .expect("build a store without types");
        for _ in 0..2 {
            let read = unregistered
                .read_stream_payloads_as::<TestEvent>("lead-1", ..)
                .await
                .expect("read");
            assert_eq!(read, expected);
        }
        assert_eq!(
            unregistered.keys.misses(),
            1,
            "the first read learns the keys, the second maps them"
        );
        let from_3 = unregistered
            .read_stream_payloads_as::<TestEvent>("lead-1", 3..)
            .await
            .expect("read from version 3");
        assert_eq!(from_3, expected[2..]);

        // a key that stands for two pairs: read in full from that event on
        let created_key: i64 = sqlx::query_scalar(
            "SELECT schema_key FROM annals_events WHERE stream_id = 'lead-1' AND stream_version = 2",
        )
        .fetch_one(&pool)
        .await
        .expect("the key of test.scored v3");
        registered.keys.learn([(created_key, "test.other", 3)]);
        for round in 1..=2 {
            let read = registered
                .read_stream_payloads_as::<TestEvent>("lead-1", ..)
                .await
                .expect("read");
            assert_eq!(read, expected);
            assert_eq!(registered.keys.misses(), round);
        }
    }
}
