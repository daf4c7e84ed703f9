//! One archive file's records: the columns a worker appends to, and the Parquet they become.
//!
//! A file holds one partition's records of one event hour, in offset order: the raw payload
//! and key with the Kafka coordinates, timestamp and headers, the event time it is filed
//! under, whether the dataflow found it valid (an invalid record is filed under its
//! append time), and the clock it was judged by (a replay judges it by the same clock).

use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{
    Array, BinaryArray, BooleanArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use tidemark_dataflows::contract::record::RecordRef;
use tidemark_dataflows::Tick;

/// A Kafka header: its key and value (a header may have no value).
pub use tidemark_dataflows::contract::record::Header;

/// One archived record, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The broker's timestamp (epoch ms).
    pub timestamp_ms: i64,
    /// The time the record is filed under: its event time, or its append time when invalid.
    pub event_ms: i64,
    pub valid: bool,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<Header>,
    /// The clock (epoch ms) the dataflow judged it by (`None` in a file of the first
    /// format, which did not keep it).
    pub read_ms: Option<i64>,
}

/// A record as the source hands it over, borrowed.
pub struct RecordIn<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub event_ms: i64,
    pub valid: bool,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub read_ms: i64,
}

impl<'a> RecordIn<'a> {
    /// A record the dataflow took, with the event time it read (`None`: invalid, filed
    /// under its append time) and the clock it judged it by.
    pub fn taken(record: &RecordRef<'a>, event: Option<Tick>, read_ms: u64) -> Self {
        RecordIn {
            offset: record.offset,
            timestamp_ms: record.append_ms,
            event_ms: event.map_or(record.append_ms, |t| t as i64),
            valid: event.is_some(),
            key: record.key,
            payload: record.payload,
            read_ms: read_ms as i64,
        }
    }
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The schema of every archive file.
pub fn schema() -> Arc<Schema> {
    let item = Field::new("item", DataType::Struct(header_fields()), true);
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("event_ms", DataType::Int64, false),
        Field::new("valid", DataType::Boolean, false),
        Field::new("key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, false),
        Field::new("headers", DataType::List(Arc::new(item)), false),
        Field::new("read_ms", DataType::Int64, false),
    ]))
}

/// The columns before `read_ms`: the first format's.
const FIRST_FORMAT_COLUMNS: usize = 9;

/// The columns of one file being filled: appending copies the record's bytes once.
pub struct Chunk {
    pub topic: Arc<str>,
    pub partition: i32,
    pub hour_ms: i64,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    events: Vec<i64>,
    valid: Vec<bool>,
    read: Vec<i64>,
    keys: BinaryBuilder,
    payloads: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    /// Payload, key and header bytes held.
    pub bytes: usize,
}

impl Chunk {
    pub fn new(topic: Arc<str>, partition: i32, hour_ms: i64) -> Self {
        Chunk {
            topic,
            partition,
            hour_ms,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            events: Vec::new(),
            valid: Vec::new(),
            read: Vec::new(),
            keys: BinaryBuilder::new(),
            payloads: BinaryBuilder::new(),
            headers: ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)),
            bytes: 0,
        }
    }

    pub fn push<'h>(
        &mut self,
        r: RecordIn<'_>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        self.offsets.push(r.offset);
        self.timestamps.push(r.timestamp_ms);
        self.events.push(r.event_ms);
        self.valid.push(r.valid);
        self.read.push(r.read_ms);
        self.keys.append_option(r.key);
        self.payloads.append_value(r.payload);
        self.bytes += r.payload.len() + r.key.map_or(0, <[u8]>::len) + 40;
        let items = self.headers.values();
        for (k, v) in headers {
            self.bytes += k.len() + v.map_or(0, <[u8]>::len);
            items
                .field_builder::<StringBuilder>(0)
                .expect("header key column")
                .append_value(k);
            items
                .field_builder::<BinaryBuilder>(1)
                .expect("header value column")
                .append_option(v);
            items.append(true);
        }
        self.headers.append(true);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The first and last offsets held (records come in offset order).
    pub fn offsets(&self) -> (i64, i64) {
        (self.offsets[0], self.offsets[self.offsets.len() - 1])
    }

    /// The file's bytes: Parquet with zstd at `level`.
    pub fn encode(mut self, level: i32) -> anyhow::Result<Vec<u8>> {
        let n = self.len();
        let bytes = self.bytes;
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                &*self.topic,
                n,
            ))),
            Arc::new(Int32Array::from(vec![self.partition; n])),
            Arc::new(Int64Array::from(std::mem::take(&mut self.offsets))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.timestamps))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.events))),
            Arc::new(BooleanArray::from(std::mem::take(&mut self.valid))),
            Arc::new(self.keys.finish()),
            Arc::new(self.payloads.finish()),
            Arc::new(self.headers.finish()),
            Arc::new(Int64Array::from(std::mem::take(&mut self.read))),
        ];
        let batch = RecordBatch::try_new(schema(), columns).context("building a record batch")?;
        let props = properties(level, bytes)?;
        // about what zstd leaves of JSON, so the file's buffer seldom grows
        let out = Vec::with_capacity(bytes / 4 + 4096);
        let mut writer = ArrowWriter::try_new(out, schema(), Some(props))?;
        writer.write(&batch)?;
        Ok(writer.into_inner()?)
    }
}

/// A file of fewer bytes than this is not compressed: a late event's file of a few records
/// gains nothing from it, and made a zstd context per column (in `bench archive`, making
/// contexts took as long as compressing).
const COMPRESS_FROM: usize = 16 << 10;

/// zstd at `level` for a file of `bytes`; a dictionary only for the columns that repeat (a
/// payload seldom does), no statistics for the bytes.
fn properties(level: i32, bytes: usize) -> anyhow::Result<WriterProperties> {
    let raw = |c: &str| parquet::schema::types::ColumnPath::from(c);
    let compression = if bytes < COMPRESS_FROM {
        Compression::UNCOMPRESSED
    } else {
        Compression::ZSTD(ZstdLevel::try_new(level)?)
    };
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(raw("topic"), true)
        .set_column_dictionary_enabled(raw("partition"), true)
        .set_column_statistics_enabled(raw("payload"), EnabledStatistics::None)
        .set_column_statistics_enabled(raw("key"), EnabledStatistics::None)
        .build())
}

/// An archive file's columns, read without copying a record: `batch` reads every record
/// of the archive once, straight from these.
pub struct Columns {
    pub topic: StringArray,
    pub partition: Int32Array,
    pub offset: Int64Array,
    pub timestamp: Int64Array,
    pub event: Int64Array,
    pub valid: BooleanArray,
    pub key: BinaryArray,
    pub payload: BinaryArray,
    pub headers: ListArray,
    /// `None` in a file of the first format.
    pub read: Option<Int64Array>,
}

impl Columns {
    pub fn len(&self) -> usize {
        self.offset.len()
    }
    pub fn is_empty(&self) -> bool {
        self.offset.is_empty()
    }
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        (!self.key.is_null(i)).then(|| self.key.value(i))
    }
}

/// The columns of an archive file's bytes, in file order (one batch: a file is one
/// worker buffer's records of a partition and hour).
pub fn columns(bytes: bytes::Bytes) -> anyhow::Result<Columns> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let rows = builder.metadata().file_metadata().num_rows().max(1) as usize;
    let batches = builder
        .with_batch_size(rows)
        .build()?
        .collect::<Result<Vec<_>, _>>()?;
    let fields = match batches.first() {
        Some(b) => b.schema().fields().clone(),
        None => schema().fields().clone(),
    };
    let now = schema();
    let first_format = fields.len() == FIRST_FORMAT_COLUMNS
        && fields.iter().zip(now.fields().iter()).all(|(a, b)| a == b);
    if fields != *now.fields() && !first_format {
        bail!("not an archive file: its columns are {fields:?}");
    }
    let batch = match batches.len() {
        0 => RecordBatch::new_empty(schema()),
        1 => batches.into_iter().next().expect("one batch"),
        _ => arrow_select::concat::concat_batches(&batches[0].schema(), &batches)?,
    };
    let col = |i: usize| batch.column(i).as_ref();
    Ok(Columns {
        topic: downcast::<StringArray>(col(0))?.clone(),
        partition: downcast::<Int32Array>(col(1))?.clone(),
        offset: downcast::<Int64Array>(col(2))?.clone(),
        timestamp: downcast::<Int64Array>(col(3))?.clone(),
        event: downcast::<Int64Array>(col(4))?.clone(),
        valid: downcast::<BooleanArray>(col(5))?.clone(),
        key: downcast::<BinaryArray>(col(6))?.clone(),
        payload: downcast::<BinaryArray>(col(7))?.clone(),
        headers: downcast::<ListArray>(col(8))?.clone(),
        read: match first_format {
            true => None,
            false => Some(downcast::<Int64Array>(col(9))?.clone()),
        },
    })
}

/// The records of an archive file's bytes, in file order.
pub fn decode(bytes: bytes::Bytes) -> anyhow::Result<Vec<ArchivedRecord>> {
    let c = columns(bytes)?;
    (0..c.len())
        .map(|i| {
            Ok(ArchivedRecord {
                topic: c.topic.value(i).to_string(),
                partition: c.partition.value(i),
                offset: c.offset.value(i),
                timestamp_ms: c.timestamp.value(i),
                event_ms: c.event.value(i),
                valid: c.valid.value(i),
                key: c.key(i).map(<[u8]>::to_vec),
                payload: c.payload.value(i).to_vec(),
                headers: read_headers(&c.headers.value(i))?,
                read_ms: c.read.as_ref().map(|r| r.value(i)),
            })
        })
        .collect()
}

fn read_headers(list: &Arc<dyn Array>) -> anyhow::Result<Vec<Header>> {
    let items = downcast::<StructArray>(list.as_ref())?;
    let keys = downcast::<StringArray>(items.column(0).as_ref())?;
    let values = downcast::<BinaryArray>(items.column(1).as_ref())?;
    Ok((0..items.len())
        .map(|j| {
            let v = (!values.is_null(j)).then(|| values.value(j).to_vec());
            (keys.value(j).to_string(), v)
        })
        .collect())
}

fn downcast<T: 'static>(a: &dyn Array) -> anyhow::Result<&T> {
    a.as_any()
        .downcast_ref::<T>()
        .context("an archive column of an unexpected type")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_reads_back_as_written() {
        let mut c = Chunk::new("t".into(), 2, 0);
        let h: Vec<(&str, Option<&[u8]>)> = vec![("trace", Some(b"x1")), ("empty", None)];
        let r = RecordIn {
            offset: 7,
            timestamp_ms: 1_000,
            event_ms: 900,
            valid: true,
            key: Some(b"k"),
            payload: b"{\"a\":1}",
            read_ms: 1_002,
        };
        c.push(r, h.into_iter());
        let r = RecordIn {
            offset: 9,
            timestamp_ms: 1_001,
            event_ms: 1_001,
            valid: false,
            key: None,
            payload: &[0xff, 0x00],
            read_ms: 1_003,
        };
        c.push(r, std::iter::empty());
        assert_eq!(c.offsets(), (7, 9));
        let bytes = c.encode(3).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let back = decode(bytes.into()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[0].headers,
            vec![
                ("trace".into(), Some(b"x1".to_vec())),
                ("empty".into(), None)
            ]
        );
        assert_eq!(
            (back[0].offset, back[0].event_ms, back[0].valid),
            (7, 900, true)
        );
        assert_eq!(
            (back[0].read_ms, back[1].read_ms),
            (Some(1_002), Some(1_003))
        );
        assert_eq!(back[1].key, None);
        assert_eq!(back[1].payload, vec![0xff, 0x00]);
        assert!(back[1].headers.is_empty());
        assert!(decode(bytes::Bytes::from_static(b"not parquet")).is_err());
    }
}
