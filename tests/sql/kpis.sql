-- An independent implementation of ../shared/spec/kpis.md in DuckDB SQL, straight from raw tp2 telemetry
-- (capture envelopes or POST bodies, one JSON document per line, gzip or plain).
-- Parameters (replaced before running): __FILES__ (a DuckDB list of file paths), __KNOWN__ (the file of
-- well-known plugin names), __AS_OF__ (a DATE literal or NULL).
-- Every statement ends with ';' on its own line end; the runner executes them in order.

create or replace macro b64json(s) as
    case when s is null then null
    else decode(from_base64(rpad(replace(replace(s, '-', '+'), '_', '/'), cast(ceil(length(s) / 4.0) * 4 as integer), '=')))::json
    end;

create or replace table lines as
select row_number() over () as line_no, json as doc
from read_json_objects(__FILES__, format = 'newline_delimited', compression = 'auto_detect');

-- one row per tracker event
create or replace table raw_events as
select
    l.line_no,
    e.i as event_index,
    e.ev,
    epoch_ms(cast(l.doc ->> 'received_at' as timestamptz)) as collector_ms
from lines l,
     unnest(
        case
            when json_type(l.doc, '$.body') = 'OBJECT' then cast(l.doc -> '$.body.data' as json[])
            when json_type(l.doc, '$.schema') = 'VARCHAR' then cast(l.doc -> '$.data' as json[])
            else [l.doc -> '$.query']
        end
     ) with ordinality as e(ev, i);

create or replace table events as
select
    line_no, event_index,
    ev ->> 'e' as e,
    ev ->> 'eid' as eid,
    cast(ev ->> 'dtm' as bigint) as dtm,
    cast(ev ->> 'stm' as bigint) as stm,
    collector_ms,
    coalesce(b64json(ev ->> 'ue_px'), (ev ->> 'ue_pr')::json) as ue,
    coalesce(b64json(ev ->> 'cx'), (ev ->> 'co')::json) as cx,
    ev ->> 'se_ca' as se_ca,
    ev ->> 'se_la' as se_la
from raw_events;

-- dedup: one event per id, the latest sent time wins (ties: first read)
create or replace table dedup as
select *, coalesce(dtm, collector_ms) as t
from (
    select *, row_number() over (partition by eid order by coalesce(stm, dtm) desc, line_no, event_index) as copy
    from events
)
where eid is null or copy = 1;

create or replace table kinds as
select
    d.*,
    case when e = 'se' then 'structured'
         else regexp_extract(ue -> 'data' ->> 'schema', 'iglu:com\.meltano/([^/]+)/', 1) end as kind,
    ue -> 'data' -> 'data' as ue_data
from dedup d;

create or replace table ctx as
select k.line_no, k.event_index, c.value ->> 'schema' as schema, c.value -> 'data' as data,
       regexp_extract(c.value ->> 'schema', 'iglu:com\.meltano/([^/]+)/', 1) as name,
       cast(regexp_extract(c.value ->> 'schema', '/jsonschema/\d+-(\d+)-\d+$', 1) as integer) as minor
from kinds k, unnest(cast(k.cx -> '$.data' as json[])) as c(value)
where k.cx is not null;

create or replace table event_facts as
select
    k.line_no, k.event_index, k.kind, k.t, k.se_ca, k.se_la, k.cx is not null as has_cx, k.ue_data,
    max(c.data ->> 'context_uuid') filter (where c.name = 'project_context') as execution_id,
    max(c.data ->> 'project_uuid') filter (where c.name = 'project_context') as project_id,
    max(c.data ->> 'project_uuid_source') filter (where c.name = 'project_context') as source,
    max(c.data ->> 'environment_name_hash') filter (where c.name = 'project_context') as env_hash,
    max(c.data ->> 'meltano_version') filter (where c.name = 'environment_context') as meltano_version,
    max(c.data ->> 'python_version') filter (where c.name = 'environment_context') as python_version,
    max(lower(c.data ->> 'is_ci_environment') = 'true') filter (where c.name = 'environment_context') as is_ci,
    max(c.data ->> 'command') filter (
        where c.name = 'cli_context' and (c.data ->> 'command') <> 'cli'
          and (c.minor = 0 or c.data ->> 'parent_command_hint' is null or c.data ->> 'parent_command_hint' = 'cli')
    ) as command,
    max(case when c.minor = 0 then c.data ->> 'sub_command' else c.data ->> 'command' end) filter (
        where c.name = 'cli_context' and (c.minor = 0 or (
            (c.data ->> 'command') <> 'cli' and c.data ->> 'parent_command_hint' is not null
            and c.data ->> 'parent_command_hint' <> 'cli'))
    ) as sub_command
from kinds k
left join ctx c using (line_no, event_index)
group by all;

-- plugin instances of each event
create or replace table event_plugins as
select f.line_no, f.event_index, p.value as plugin
from event_facts f
join ctx c using (line_no, event_index),
     unnest(cast(c.data -> '$.plugins' as json[])) as p(value)
where c.name = 'plugins_context';

create or replace table known as
select trim(column0) as name, sha256(trim(column0)) as h
from read_csv(__KNOWN__, header = false, columns = {'column0': 'VARCHAR'}, delim = '\t')
where trim(column0) <> '' and not starts_with(trim(column0), '#');

create or replace macro norm_command(v) as
    case
        when v is null or json_type(v) = 'NULL' then 'null'
        when json_type(v) = 'VARCHAR' and (v ->> '$') = '' then 'null'
        when json_type(v) = 'ARRAY' and json_array_length(v) = 0 then 'null'
        when json_type(v) = 'ARRAY' then to_json(array_to_string(list_transform(cast(v as json[]), lambda x: coalesce(x ->> '$', x::varchar)), ' '))::varchar
        else v::varchar
    end;

create or replace table plugin_keys as
select
    line_no, event_index, plugin,
    md5('{' || array_to_string(list_transform(list_sort(json_keys(plugin)), lambda k:
        to_json(k)::varchar || ':' || case when k = 'command' then norm_command(plugin -> ('$."' || k || '"'))
                                             else (plugin -> ('$."' || k || '"'))::varchar end), ',') || '}') as plugin_key,
    case when json_exists(plugin, '$.command') then
        (case when norm_command(plugin -> '$.command') = 'null' then null else norm_command(plugin -> '$.command')::json ->> '$' end)
    end as command
from event_plugins;

create or replace table plugin_info as
select distinct on (plugin_key)
    plugin_key,
    plugin ->> 'category' as category,
    plugin ->> 'name_hash' as name_hash,
    plugin ->> 'parent_name_hash' as parent_name_hash,
    command,
    kp.name as parent_name,
    kn.name as own_name,
    case
        when (plugin ->> 'category') in ('extractors', 'loaders', 'mappers') then 'singer'
        when (plugin ->> 'category') in ('transformers', 'utilities')
             and (coalesce(kp.name, '') like '%dbt%' or coalesce(kn.name, '') like '%dbt%') then 'dbt'
        else coalesce(kp.name, kn.name, plugin ->> 'parent_name_hash', plugin ->> 'name_hash', 'unknown')
    end as plugin_category,
    coalesce(kp.name = 'tap-smoke-test', false) as is_test
from plugin_keys
left join known kp on kp.h = plugin ->> 'parent_name_hash'
left join known kn on kn.h = plugin ->> 'name_hash'
order by plugin_key;

-- executions (state changes and context-less structured events are not part of executions)
create or replace table exec_events as
select * from event_facts
where kind <> 'telemetry_state_change_event' and not (kind = 'structured' and not has_cx)
  and execution_id is not null;

create or replace table exec_plugins as
select x.execution_id, k.plugin_key,
       min(x.t) filter (where x.kind = 'block_event') as first_seen
from exec_events x join plugin_keys k using (line_no, event_index)
group by all;

create or replace table executions_all as
select
    execution_id,
    max(project_id) as project_id,
    max(source) as source,
    min(t) as started,
    max(t) as finished,
    coalesce(max(command), max(split_part(se_ca, ' ', 2)) filter (where kind = 'structured')) as command,
    max(sub_command) as sub_command,
    max(env_hash) as env_hash,
    max(try_cast(ue_data ->> 'exit_code' as bigint)) filter (
        where kind = 'exit_event' and json_type(ue_data, '$.exit_code') in ('BIGINT', 'UBIGINT')) as exit_code,
    max(meltano_version) as meltano_version,
    max(python_version) as python_version,
    max(is_ci) as is_ci,
    count(*) as event_count
from exec_events
group by execution_id
having max(project_id) is not null;

create or replace table exec_plugin_order as
select p.execution_id, p.plugin_key, p.first_seen,
       row_number() over (partition by p.execution_id order by p.first_seen asc nulls last, p.plugin_key desc) as pos
from exec_plugins p semi join executions_all x using (execution_id);

create or replace table executions as
select
    x.*,
    coalesce(x.exit_code = 0, false) as is_success,
    x.command in ('invoke', 'el', 'elt', 'run', 'test') and x.command is not null as is_exec,
    coalesce(np.n, 0) as plugin_count,
    case when x.command in ('el', 'elt', 'run') and coalesce(np.n, 0) > 0 then
        md5(np.keys || '-' || coalesce(x.env_hash, '') || '-' || x.project_id) end as pipeline_id
from executions_all x
left join (
    select execution_id, count(*) as n, string_agg(plugin_key, ',' order by pos) as keys
    from exec_plugin_order group by all
) np using (execution_id);

create or replace table structured_seen as
select se_la as project_id, t from event_facts where kind = 'structured' and not has_cx and se_la is not null;

create or replace table opt_outs as
select project_id, min(t) as opted_out
from event_facts
where kind = 'telemetry_state_change_event' and ue_data ->> 'setting_name' = 'send_anonymous_usage_stats'
  and lower(ue_data ->> 'changed_to') = 'false' and project_id is not null
group by all;

create or replace table projects_all as
select
    x.project_id,
    least(min(x.started), (select min(s.t) from structured_seen s where s.project_id = x.project_id)) as first_ms,
    greatest(max(x.started), (select max(s.t) from structured_seen s where s.project_id = x.project_id)) as last_ms,
    coalesce(arg_min(x.source, (x.started, x.execution_id)) filter (
        where x.source is not null and coalesce(x.command, '') <> 'init'), 'UNKNOWN') as source,
    bool_and(coalesce(x.is_ci, false)) as is_ci_only
from executions x
group by x.project_id;

create or replace table params as
select coalesce(__AS_OF__, (select cast(epoch_ms(max(t)) as date) from dedup)) as as_of;

create or replace macro day_of(ms) as cast(epoch_ms(ms) as date);
create or replace macro month_of(d) as cast(date_trunc('month', d) as date);
create or replace macro ts(ms) as strftime(epoch_ms(ms), '%Y-%m-%dT%H:%M:%S.%gZ');
create or replace macro runtime_bin(ms) as
    case when ms is null then 'N/A' when ms <= 5000 then '< 5s' when ms <= 10001 then '5s - 10s'
         when ms <= 30000 then '10s - 30s' when ms <= 60000 then '30s - 1m'
         when ms <= 180000 then '1m - 3m' when ms <= 300000 then '3m - 5m'
         when ms <= 600000 then '5m - 10m' when ms <= 1800000 then '10m - 30m'
         when ms <= 3600000 then '30m - 1hr' when ms <= 10800000 then '1hr - 3hr'
         else '3hr+' end;

create or replace table counted as
select x.*, day_of(x.started) as day from executions x, params p where day_of(x.started) <= p.as_of;

create or replace table projects_in as
select a.*, day_of(a.first_ms) as first_day
from projects_all a where a.project_id in (select project_id from counted);

-- qualifying days over the whole series, and the active days they make
create or replace table qualifying as
select distinct x.project_id, day_of(x.started) as q
from executions x join projects_all a using (project_id)
where x.is_exec and x.plugin_count > 0 and a.source <> 'random'
  and date_diff('day', day_of(a.first_ms), day_of(x.started)) >= 7;

create or replace table active as
select distinct project_id, q + cast(i as integer) as day
from qualifying, range(0, 29) r(i);

create or replace table active_flags as
select project_id, day,
    lag(day) over w is null as is_added,
    lag(day) over w is not null and lag(day) over w <> day - 1 as is_reactivated,
    lead(day) over w is null or lead(day) over w <> day + 1 as is_churn_day,
    min(day) over (partition by project_id) as added_day
from active
window w as (partition by project_id order by day);

create or replace table month_flags as
select m.project_id, m.month,
    s.day is not null and not s.is_added as active_at_start,
    e.day is not null and not e.is_churn_day as active_at_end,
    month_of(m.added_day) = m.month as added_in_month
from (select distinct project_id, month_of(day) as month, added_day from active_flags, params where day <= as_of) m
left join active_flags s on s.project_id = m.project_id and s.day = m.month
left join active_flags e on e.project_id = m.project_id and e.day = cast(m.month + interval 1 month - interval 1 day as date);

create or replace table month_flags_full as
select *, cast(month + interval 1 month - interval 1 day as date) <= (select as_of from params) as complete,
    active_at_start and active_at_end as active_unchanged,
    not active_at_start and not active_at_end as inactive_unchanged,
    active_at_start and not active_at_end as churned,
    not active_at_start and active_at_end and added_in_month as added,
    not active_at_start and active_at_end and not added_in_month as reactivated
from month_flags;

-- stream: daily_active_projects
create or replace table out_daily_active_projects as
select f.project_id, f.day as date, f.is_added, f.is_reactivated, f.is_churn_day,
    case when m.complete then m.active_at_start end as is_active_month_start,
    case when m.complete then m.active_at_end end as is_active_month_end,
    case when m.complete then m.active_unchanged end as eom_active_unchanged,
    case when m.complete then m.inactive_unchanged end as eom_inactive_unchanged,
    case when m.complete then m.churned end as eom_churned,
    case when m.complete then m.added end as eom_added,
    case when m.complete then m.reactivated end as eom_reactivated
from active_flags f
join month_flags_full m on m.project_id = f.project_id and m.month = month_of(f.day), params
where f.day <= as_of;

create or replace table days as
select cast(d as date) as day
from params, range((select min(first_day) from projects_in), as_of + interval 1 day, interval 1 day) r(d);

create or replace table busy as
select distinct project_id, day + cast(i as integer) as d from (
    select project_id, day from counted where command in ('invoke', 'el', 'elt', 'run', 'test', 'ui')
    group by all having count(*) >= 2
), range(0, 29) r(i);

create or replace table multi as
select distinct project_id, day + cast(i as integer) as d from (
    select project_id, day from counted where pipeline_id is not null
    group by all having count(distinct pipeline_id) >= 2
), range(0, 29) r(i);

-- stream: active_projects_daily
create or replace table out_active_projects_daily as
select
    days.day as date,
    (select count(*) from active a where a.day = days.day) as active_projects,
    (select count(*) from active_flags a where a.day = days.day and a.is_added) as added,
    (select count(*) from active_flags a where a.day = days.day and a.is_reactivated) as reactivated,
    (select count(*) from active_flags a where a.day = days.day and a.is_churn_day) as churned,
    (select count(*) from busy b where b.d = days.day) as exec_greater_1,
    (select count(*) from multi b where b.d = days.day) as unique_pipe_greater_1,
    (select count(*) from counted c where c.day = days.day) as executions,
    (select count(*) from counted c where c.day = days.day and c.is_exec) as exec_executions,
    (select count(*) from counted c where c.day = days.day and c.pipeline_id is not null) as pipeline_runs,
    (select count(*) from counted c where c.day = days.day and c.pipeline_id is not null and c.is_success) as successful_pipeline_runs,
    (select count(*) filter (where c.is_success) / nullif(count(*), 0) from counted c where c.day = days.day and c.pipeline_id is not null) as pipeline_success_rate,
    (select count(distinct c.pipeline_id) from counted c where c.day = days.day) as unique_pipelines,
    (select count(*) from projects_in p where p.first_day = days.day) as new_projects_acquired,
    (select count(*) from active_flags a where a.day = days.day and a.is_added) as new_projects_activated
from days;

-- segments
create or replace table segments as
select c.project_id, month_of(c.day) as month,
    count(*) as executions,
    count(*) filter (where c.pipeline_id is not null) as pipeline_runs,
    count(*) filter (where c.pipeline_id is not null and (
        case when cast(month_of(c.day) + interval 1 month - interval 1 day as date) <= p.as_of
             then exists (select 1 from active a where a.project_id = c.project_id
                          and a.day = cast(month_of(c.day) + interval 1 month - interval 1 day as date))
             else exists (select 1 from active a where a.project_id = c.project_id and a.day = c.day) end
    )) as pipeline_runs_active_eom
from counted c, params p
group by all;

create or replace table out_project_monthly_segments as
select project_id, month, executions, pipeline_runs, pipeline_runs_active_eom,
    case when pipeline_runs_active_eom = 0 then 'NO_PIPELINES' when pipeline_runs_active_eom < 50 then 'GUPPY'
         when pipeline_runs_active_eom <= 2000 then 'MARLIN' else 'WHALE' end as segment
from segments;

create or replace table months as
select cast(m as date) as month
from params, range(month_of((select min(first_day) from projects_in)), month_of(as_of) + interval 1 month, interval 1 month) r(m);

-- stream: monthly_kpis
create or replace table out_monthly_kpis as
select
    months.month,
    cast(months.month + interval 1 month - interval 1 day as date) <= p.as_of as is_complete,
    case when is_complete then (select count(*) filter (where f.active_at_end) from month_flags_full f where f.month = months.month) end as monthly_active_projects,
    (select count(distinct a.project_id) from active a where month_of(a.day) = months.month and a.day <= p.as_of) as active_projects_any_day,
    case when is_complete then (select count(*) filter (where f.added) from month_flags_full f where f.month = months.month) end as added,
    case when is_complete then (select count(*) filter (where f.reactivated) from month_flags_full f where f.month = months.month) end as reactivated,
    case when is_complete then (select count(*) filter (where f.churned) from month_flags_full f where f.month = months.month) end as churned,
    case when is_complete then (select count(*) filter (where f.active_unchanged) from month_flags_full f where f.month = months.month) end as active_unchanged,
    case when is_complete then (select count(*) filter (where f.inactive_unchanged) from month_flags_full f where f.month = months.month) end as inactive_unchanged,
    (select count(*) from projects_in q where month_of(q.first_day) = months.month) as new_projects_acquired,
    (select count(*) from active_flags a where a.is_added and month_of(a.day) = months.month and a.day <= p.as_of) as new_projects_activated,
    (select count(*) from counted c where month_of(c.day) = months.month) as executions,
    (select count(*) from counted c where month_of(c.day) = months.month and c.pipeline_id is not null) as pipeline_runs,
    (select count(*) from counted c where month_of(c.day) = months.month and c.pipeline_id is not null and c.is_success) as successful_pipeline_runs,
    (select count(*) filter (where c.is_success) / nullif(count(*), 0) from counted c where month_of(c.day) = months.month and c.pipeline_id is not null) as pipeline_success_rate,
    (select count(distinct c.pipeline_id) from counted c where month_of(c.day) = months.month) as unique_pipelines,
    (select count(*) from out_project_monthly_segments s where s.month = months.month and s.segment = 'GUPPY') as guppy_projects,
    (select count(*) from out_project_monthly_segments s where s.month = months.month and s.segment = 'MARLIN') as marlin_projects,
    (select count(*) from out_project_monthly_segments s where s.month = months.month and s.segment = 'WHALE') as whale_projects,
    (select count(*) from out_project_monthly_segments s where s.month = months.month and s.segment = 'NO_PIPELINES') as no_pipelines_projects
from months, params p;

-- stream: plugin_usage
create or replace table out_plugin_usage as
select month_of(c.day) as month, i.plugin_category, count(distinct c.execution_id) as executions, count(distinct c.project_id) as projects
from counted c join exec_plugins ep using (execution_id) join plugin_info i using (plugin_key)
group by all;

-- stream: cohort_retention
create or replace table cohort_members as
select p.project_id, month_of(p.first_day) as cohort,
    (select count(*) from counted c where c.project_id = p.project_id and c.is_exec) > 1 as multi
from projects_in p;

create or replace table cohort_activity as
select distinct m.project_id, m.cohort, m.multi, month_of(c.day) as month
from cohort_members m join counted c using (project_id);

create or replace table out_cohort_retention as
with grid as (
    select cohort, cast(mo as date) as month, count(*) as cohort_projects
    from cohort_members, params, range(cohort, month_of(as_of) + interval 1 month, interval 1 month) r(mo)
    group by cohort, mo
), counts as (
    select cohort, month, count(*) as active_projects, count(*) filter (where multi) as active_projects_multi_exec
    from cohort_activity group by all
)
select g.cohort as cohort_month,
    date_diff('month', g.cohort, g.month) as month_number,
    g.month,
    g.cohort_projects,
    coalesce(c.active_projects, 0) as active_projects,
    coalesce(c.active_projects_multi_exec, 0) as active_projects_multi_exec,
    coalesce(c.active_projects, 0) / nullif(c0.active_projects, 0) as retention,
    coalesce(c.active_projects_multi_exec, 0) / nullif(c0.active_projects_multi_exec, 0) as retention_multi_exec
from grid g
left join counts c on c.cohort = g.cohort and c.month = g.month
left join counts c0 on c0.cohort = g.cohort and c0.month = g.cohort;

-- stream: projects
create or replace table out_projects as
select
    p.project_id,
    p.source as project_id_source,
    ts(p.first_ms) as first_event_at,
    ts(p.last_ms) as last_event_at,
    date_diff('day', day_of(p.first_ms), day_of(p.last_ms)) as lifespan_days,
    month_of(p.first_day) as cohort_month,
    0 as ip_hash_count,
    p.is_ci_only,
    ts(o.opted_out) as opted_out_at,
    o.opted_out is not null as has_opted_out,
    (select count(*) from counted c where c.project_id = p.project_id) as executions,
    (select count(*) from counted c where c.project_id = p.project_id and c.is_exec) as exec_executions,
    (select count(*) from counted c where c.project_id = p.project_id and c.is_exec and c.is_success) as exec_executions_successful,
    (select count(*) from counted c where c.project_id = p.project_id and c.pipeline_id is not null) as pipeline_runs,
    (select count(*) from counted c where c.project_id = p.project_id and c.pipeline_id is not null and c.is_success) as pipeline_runs_successful,
    (select count(distinct c.pipeline_id) from counted c where c.project_id = p.project_id) as unique_pipelines,
    (select min(a.day) from active a, params where a.project_id = p.project_id and a.day <= as_of) as first_active_date,
    (select max(a.day) from active a, params where a.project_id = p.project_id and a.day <= as_of) as last_active_date
from projects_in p left join opt_outs o using (project_id);

-- stream: pipeline_runs
create or replace table out_pipeline_runs as
select execution_id, pipeline_id, project_id, command, ts(started) as started_at, day as run_date,
    finished - started as runtime_ms,
    runtime_bin(finished - started)as runtime_bin,
    exit_code, is_success
from counted where pipeline_id is not null;

-- stream: pipelines
create or replace table out_pipelines as
select c.pipeline_id, any_value(c.project_id) as project_id, any_value(c.env_hash) as environment_hash,
    (select list(o.plugin_key order by o.pos) from exec_plugin_order o where o.execution_id = any_value(c.execution_id)) as plugin_keys,
    any_value(c.plugin_count) as plugin_count,
    (select bool_or(i.is_test) from exec_plugin_order o join plugin_info i using (plugin_key) where o.execution_id = any_value(c.execution_id)) as is_test_pipeline,
    ts(min(c.started)) as first_run_at, ts(max(c.started)) as last_run_at,
    count(*) as runs, count(*) filter (where c.is_success) as successful_runs
from counted c where c.pipeline_id is not null
group by c.pipeline_id;

-- stream: cli_executions
create or replace table out_cli_executions as
select c.execution_id, c.project_id, c.source as project_id_source, ts(c.started) as started_at, ts(c.finished) as finished_at,
    c.day as event_date, c.finished - c.started as runtime_ms,
    runtime_bin(c.finished - c.started) as runtime_bin, c.command, c.sub_command, c.env_hash as environment_hash, c.exit_code, c.is_success, c.is_exec,
    c.pipeline_id is not null as is_pipeline_run, c.pipeline_id, c.meltano_version, c.python_version, c.is_ci,
    c.event_count, c.plugin_count,
    coalesce((select list({'plugin_key': o.plugin_key, 'category': i.category, 'plugin_category': i.plugin_category,
                          'name_hash': i.name_hash, 'parent_name_hash': i.parent_name_hash, 'command': i.command,
                          'first_seen_at': ts(o.first_seen), 'is_test_plugin': i.is_test} order by o.pos)
              from exec_plugin_order o join plugin_info i using (plugin_key) where o.execution_id = c.execution_id), []) as plugins
from counted c;
