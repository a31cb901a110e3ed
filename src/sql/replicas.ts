import { sql, type SQL } from "drizzle-orm";

/**
 * The primary's WAL position now, as `lsn` (a pg_lsn as text): every commit that was acknowledged before
 * this statement was sent ends at or before it (the insert position, which is past what was written or
 * flushed, whatever `synchronous_commit`). With `standbys`, also the standbys the primary streams to
 * (`standbys`: a JSON array of `{ name, state }` from pg_stat_replication, whose `sync_state` only a role
 * with pg_monitor or pg_read_all_stats sees) and the `synchronous_standby_names` setting (`names`).
 */
export function walPosition(standbys: boolean): SQL {
  const states = standbys
    ? sql`, (select coalesce(json_agg(json_build_object('name', application_name, 'state', sync_state)), '[]')::text
        from pg_stat_replication) as standbys, current_setting('synchronous_standby_names') as names`
    : sql``;
  return sql`select pg_current_wal_insert_lsn()::text as lsn${states}`;
}

/**
 * What a replica says of itself: whether it is a standby (`standby`: in recovery), and its name as its
 * primary knows it (`name`): the `application_name` of its WAL receiver's connection, or else its
 * `cluster_name`, or else `walreceiver` (Postgres's own order for naming a standby in
 * `synchronous_standby_names`).
 */
export function replicaIdentity(): SQL {
  return sql`select pg_is_in_recovery() as standby, coalesce(
      (select substring(conninfo from 'application_name=([^ ]+)') from pg_stat_wal_receiver),
      nullif(current_setting('cluster_name'), ''), 'walreceiver') as name`;
}
