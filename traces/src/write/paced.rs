//! A Parquet file written a row group at a time whose long steps can be paused between.
//!
//! `ArrowWriter` completes a row group in one call: every column's page is encoded,
//! zstd-compressed and written at once, several ms of CPU for a 32,768-row group of
//! requests. The proxy's recorder shares a CPU with the event loop it records, and requests
//! waited behind that burst (the scheduler hands the CPU back only after its slice, a few
//! ms at a time). Here the group's columns are closed (encoded and compressed) one at a
//! time, with a `pause` (a yield of the thread) after each, so no step is longer than one
//! column's.

use std::fs::File;
use std::io;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// One Parquet file being written (the Arrow schema embedded as `ArrowWriter` does).
pub(super) struct PacedWriter {
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The in-progress row group's column writers, one per leaf column.
    columns: Option<Vec<ArrowColumnWriter>>,
}

impl PacedWriter {
    pub(super) fn try_new(
        file: File,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<PacedWriter, ParquetError> {
        let (file, factory) =
            ArrowWriter::try_new(file, schema.clone(), Some(props))?.into_serialized_writer()?;
        Ok(PacedWriter {
            file,
            factory,
            schema,
            columns: None,
        })
    }

    /// Encodes `batch` into the in-progress row group (its values buffered per column;
    /// compressed when the group is completed).
    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let columns = match &mut self.columns {
            Some(columns) => columns,
            slot => slot.insert(
                self.factory
                    .create_column_writers(self.file.flushed_row_groups().len())?,
            ),
        };
        let mut writers = columns.iter_mut();
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field.as_ref(), column)? {
                let writer = writers.next().ok_or_else(|| {
                    ParquetError::General("more leaf columns than column writers".into())
                })?;
                writer.write(&leaf)?;
            }
        }
        Ok(())
    }

    /// Completes the in-progress row group: each column is closed (its page encoded and
    /// compressed) with a pause after it, then the group is appended to the file.
    pub(super) fn flush_group(&mut self, pause: &mut dyn FnMut()) -> Result<(), ParquetError> {
        let Some(columns) = self.columns.take() else {
            return Ok(());
        };
        let mut chunks = Vec::with_capacity(columns.len());
        for column in columns {
            chunks.push(column.close()?);
            pause();
        }
        let mut group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        Ok(())
    }

    /// Estimated encoded size of the in-progress row group.
    pub(super) fn in_progress_size(&self) -> usize {
        self.columns.as_ref().map_or(0, |columns| {
            columns.iter().map(|c| c.get_estimated_total_bytes()).sum()
        })
    }

    /// Memory held by the in-progress row group's writers.
    pub(super) fn memory_size(&self) -> usize {
        self.columns
            .as_ref()
            .map_or(0, |columns| columns.iter().map(|c| c.memory_size()).sum())
    }

    /// Bytes written to the file so far (completed row groups, and the footer once
    /// finished).
    pub(super) fn bytes_written(&self) -> usize {
        self.file.bytes_written()
    }

    /// Metadata of the completed row groups.
    pub(super) fn flushed_row_groups(&self) -> &[RowGroupMetaData] {
        self.file.flushed_row_groups()
    }

    /// Writes buffered bytes to the file (not fsynced).
    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    pub(super) fn inner(&self) -> &File {
        self.file.inner()
    }

    /// Completes the in-progress row group and writes the footer.
    pub(super) fn finish(&mut self, pause: &mut dyn FnMut()) -> Result<(), ParquetError> {
        self.flush_group(pause)?;
        self.file.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rows::{SampleRow, SampleSource};
    use crate::schema::Row;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn a_row_group_is_completed_a_column_at_a_time_and_reads_back() {
        let rows: Vec<SampleRow> = (0..3000)
            .map(|i| SampleRow {
                time_us: 1_733_011_200_000_000 + i,
                source: SampleSource::Server,
                name: format!("metric{}", i % 7),
                labels: String::new(),
                value: i as f64 / 2.0,
            })
            .collect();
        let batch = SampleRow::to_batch(&rows).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paced.parquet");
        let mut writer = PacedWriter::try_new(
            File::create(&path).unwrap(),
            batch.schema(),
            WriterProperties::builder().build(),
        )
        .unwrap();
        let mut pauses = 0;
        writer.write(&batch.slice(0, 1000)).unwrap();
        writer.write(&batch.slice(1000, 1000)).unwrap();
        assert!(writer.in_progress_size() > 0);
        writer.flush_group(&mut || pauses += 1).unwrap();
        let columns = writer.flushed_row_groups()[0].num_columns();
        assert_eq!(
            pauses, columns,
            "a pause after each of the {columns} columns"
        );
        assert_eq!(writer.in_progress_size(), 0);
        writer.write(&batch.slice(2000, 1000)).unwrap();
        writer.finish(&mut || pauses += 1).unwrap();
        assert_eq!(pauses, 2 * columns);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut back = Vec::new();
        for b in reader {
            back.extend(SampleRow::from_batch(&b.unwrap()).unwrap());
        }
        assert_eq!(back, rows);
    }
}
