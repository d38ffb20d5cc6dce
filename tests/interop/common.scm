;;; common.scm -- helpers loaded by every interop scenario script.
;;;
;;; A scenario script runs inside the Guix root as
;;;   guix repl -- SCRIPT.scm TRANSCRIPT.json [ARG...]
;;; against the daemon named by GUIX_DAEMON_SOCKET, with the store relocated
;;; by NIX_STORE_DIR (see tests/integration/support/).  It performs
;;; operations, records each outcome as a step of a transcript, checks what
;;; the Guix client expects of every daemon, writes the transcript as JSON
;;; and exits with status 1 if a check failed.
;;;
;;; Keeps true: a transcript depends only on the script, its arguments and
;;; the daemon's behaviour (store paths, hashes, sizes, references, error
;;; texts and statuses, file metadata); it holds no clock readings, no
;;; process ids and no registration times (those are only checked); steps
;;; appear in the order they were made.

(use-modules (guix store)
             (guix serialization)
             (guix base16)
             (guix base32)
             (gcrypt hash)
             (json)
             (rnrs bytevectors)
             (rnrs io ports)
             ((ice-9 exceptions) #:select (exception-kind))
             (ice-9 ftw)
             (ice-9 match)
             (ice-9 format)
             (srfi srfi-1)
             (srfi srfi-11)
             (srfi srfi-26)
             (srfi srfi-34)
             (srfi srfi-35))

;; A connection the daemon closed must turn into an exception, not a signal.
(sigaction SIGPIPE SIG_IGN)

;; Files made here get exactly the modes asked for.
(umask #o022)

;;; Command line and environment.

(define (transcript-file)
  (match (command-line)
    ((_ file . _) file)
    (_ (error "usage: guix repl -- SCRIPT.scm TRANSCRIPT.json [ARG...]"))))

(define (script-arguments)
  (match (command-line)
    ((_ _ . rest) rest)
    (_ '())))

(define (it-dir)
  (or (getenv "GUIXD_IT_DIR") (error "GUIXD_IT_DIR is not set")))

(define (keys-dir)
  (or (getenv "GUIXD_IT_KEYS") (error "GUIXD_IT_KEYS is not set")))

(define %work-counter 0)

(define (scratch-file name)
  "A fresh file name under the daemon's scratch directory."
  (set! %work-counter (+ 1 %work-counter))
  (string-append (it-dir) "/work/" (number->string %work-counter) "-" name))

;;; The transcript.

(define %steps '())                     ;reversed list of (LABEL . JSON)
(define %failures '())                  ;reversed list of strings

(define %trace? (getenv "GUIXD_IT_TRACE"))

(define (record! label value)
  (when %trace?
    (format (current-error-port) "step: ~a~%" label))
  (set! %steps (cons (cons label value) %steps)))

(define (check! label ok? . details)
  "Note a failed expectation unless OK? is true; return OK?."
  (unless ok?
    (set! %failures
          (cons (if (null? details)
                    label
                    (format #f "~a: ~s" label details))
                %failures)))
  ok?)

(define (finish!)
  "Write the transcript and exit: 0 if every check held, 1 otherwise."
  (call-with-output-file (transcript-file)
    (lambda (port)
      (set-port-encoding! port "UTF-8")
      (scm->json
       `(("steps" . ,(list->vector
                      (map (match-lambda
                             ((label . value)
                              `(("label" . ,label) ("value" . ,value))))
                           (reverse %steps))))
         ("failures" . ,(list->vector (reverse %failures))))
       port)
      (newline port)))
  (for-each (lambda (f) (format (current-error-port) "FAILED: ~a~%" f))
            (reverse %failures))
  (exit (if (null? %failures) 0 1)))

;;; Outcomes.
;;;
;;; An outcome is one of
;;;   (ok . VALUE)
;;;   (error MESSAGE STATUS)   the daemon answered with an error
;;;   (closed)                 the connection broke (EOF, reset)
;;;   (exception KEY)          anything else

(define (attempt thunk)
  (guard (c ((store-protocol-error? c)
             (list 'error (store-protocol-error-message c)
                   (store-protocol-error-status c)))
            ((store-connection-error? c) (list 'closed))
            ((nar-error? c) (list 'closed))
            ((eq? (kind-of c) 'system-error)
             ;; EPIPE or ECONNRESET: the daemon went away.
             (list 'closed))
            (else
             (list 'exception (format #f "~a" (or (kind-of c) c)))))
    (cons 'ok (thunk))))

(define (kind-of c)
  "The key of a Guile exception, or #f."
  (false-if-exception (exception-kind c)))

(define (ok? outcome) (eq? (car outcome) 'ok))
(define (ok-value outcome) (cdr outcome))
(define (error? outcome) (eq? (car outcome) 'error))
(define (closed? outcome) (eq? (car outcome) 'closed))

(define (error-message outcome)
  (match outcome (('error message _) message) (_ #f)))

(define (error-status outcome)
  (match outcome (('error _ status) status) (_ #f)))

(define (error-contains? outcome text)
  (let ((m (error-message outcome)))
    (and m (string-contains m text) #t)))

(define (outcome->json outcome encode)
  (match outcome
    (('ok . value) `(("ok" . ,(encode value))))
    (('error message status) `(("error" . ,message) ("status" . ,status)))
    (('closed) '(("closed" . #t)))
    (('exception key) `(("exception" . ,key)))))

(define* (step! label thunk #:key (encode identity))
  "Run THUNK, record its outcome (encoded with ENCODE when it succeeds) and
whatever the daemon logged meanwhile under LABEL; return the outcome."
  (let* ((log (open-output-string))
         (outcome (parameterize ((current-build-output-port log))
                    (attempt thunk)))
         (text (get-output-string log)))
    (record! label
             (append (outcome->json outcome encode)
                     (if (string-null? text) '() `(("log" . ,text)))))
    outcome))

(define* (expect-ok! label thunk #:key (encode identity))
  "Like `step!', and check that THUNK succeeded; return its value or #f."
  (let ((o (step! label thunk #:encode encode)))
    (check! label (ok? o) o)
    (and (ok? o) (ok-value o))))

(define (expect-error! label thunk text)
  "Like `step!', and check that THUNK failed with a message containing
TEXT and a non-zero status; return the outcome."
  (let ((o (step! label thunk)))
    (check! label (and (error-contains? o text)
                       (not (zero? (error-status o))))
            'expected text 'got o)
    o))

;;; Connections.

(define (connect) (open-connection))

(define (alive? store)
  "Whether STORE still answers a request."
  (ok? (attempt (lambda () (valid-path? store (string-append (%store-prefix)
                                                            "/x"))))))

(define (step-alive! label store expected)
  "Record whether STORE survived; check that this is EXPECTED."
  (let ((alive (alive? store)))
    (record! label `(("alive" . ,alive)))
    (check! label (eq? alive expected) 'alive alive 'expected expected)
    alive))

(define process-stderr* (@@ (guix store) process-stderr))

(define (request-bytes op write-arguments)
  "The bytes of a request for operation OP whose fields WRITE-ARGUMENTS
writes."
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (write-int op port)
      (write-arguments port)
      (get))))

(define (raw-operation store op write-arguments read-result)
  "Send operation number OP to STORE by hand: WRITE-ARGUMENTS writes the
request fields, READ-RESULT reads the reply after the daemon is done.  For
operations the 1.5.0 client has no procedure for, and for malformed
requests.

The request goes out in a single write, so a daemon that stops reading it
half-way and closes the connection cannot make the write fail: the reply
it sent before closing is then always read."
  (let ((s (store-connection-socket store)))
    (put-bytevector s (request-bytes op write-arguments))
    (force-output s)
    (let loop ()
      (unless (process-stderr* store)
        (loop)))
    (read-result s)))

(define (raw-error-bytes store op write-arguments)
  "Send operation OP like `raw-operation' and return the hex of the raw
bytes of the error message the daemon answers with (#f if it does not
answer with an error), without any decoding by the client."
  (let ((s (store-connection-socket store)))
    (put-bytevector s (request-bytes op write-arguments))
    (force-output s)
    (let loop ()
      (let ((code (read-int s)))
        (cond ((= code #x63787470)              ;STDERR_ERROR
               (hex (u8-list->bytevector
                     (map char->integer
                          (string->list (read-latin1-string s))))))
              ((= code #x6f6c6d67)              ;STDERR_NEXT
               (read-latin1-string s)
               (loop))
              (else #f))))))

;;; Store paths and hashes.

(define (in-store name) (string-append (%store-prefix) "/" name))

(define %missing
  ;; A syntactically valid store path that no scenario ever creates.
  (in-store "00000000000000000000000000000000-missing"))

(define (hex bv) (bytevector->base16-string bv))

(define (nar-bytes file)
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (write-file file port)
      (get))))

(define (text-store-path name contents refs)
  "The path the client expects for a text item."
  (store-path (string-append "text"
                             (string-concatenate
                              (map (cut string-append ":" <>)
                                   (sort refs string<?))))
              (sha256 (if (string? contents) (string->utf8 contents) contents))
              name))

(define %algorithms
  '(md5 sha1 sha256 sha512 sha3-256 sha3-512 blake2s-256))

(define (digest algo bv)
  (bytevector-hash bv (lookup-hash-algorithm algo)))

;;; Encoders for recorded values.

(define (paths->json paths) (list->vector paths))

(define (path-info->json info)
  `(("deriver" . ,(or (path-info-deriver info) 'null))
    ("hash" . ,(hex (path-info-hash info)))
    ("references" . ,(list->vector (path-info-references info)))
    ("nar_size" . ,(path-info-nar-size info))))

(define (check-path-info! label info file)
  "Check INFO against what the client computes from FILE on disk, and that
its registration time is plausible (it is never recorded)."
  (let ((nar (nar-bytes file))
        (time (path-info-registration-time info)))
    (check! (string-append label ": NAR hash")
            (bytevector=? (path-info-hash info) (sha256 nar)))
    (check! (string-append label ": NAR size")
            (= (path-info-nar-size info) (bytevector-length nar))
            (path-info-nar-size info) (bytevector-length nar))
    (check! (string-append label ": registration time")
            (and (> time 0) (<= time (+ (current-time) 60)))
            time)))

;;; Trees on disk.
;;;
;;; A tree is (regular BYTEVECTOR), (executable BYTEVECTOR),
;;; (symlink TARGET) or (directory (NAME TREE) ...).

(define (write-bytes! file bv mode)
  (call-with-output-file file
    (lambda (port) (put-bytevector port bv))
    #:binary #t)
  (chmod file mode))

(define (create-tree! file tree)
  (match tree
    (('regular bv) (write-bytes! file bv #o644))
    (('executable bv) (write-bytes! file bv #o755))
    (('symlink target) (symlink target file))
    (('directory entries ...)
     (mkdir file #o755)
     (for-each (match-lambda
                 ((name sub) (create-tree! (string-append file "/" name) sub)))
               entries))))

(define (make-tree name tree)
  "Create TREE under a fresh scratch name ending in NAME; return the name."
  (let ((file (scratch-file name)))
    (create-tree! file tree)
    file))

(define (pattern-bytes size seed)
  "SIZE bytes of a fixed pseudo-random pattern derived from SEED."
  (let ((bv (make-bytevector size)))
    (let loop ((i 0) (x seed))
      (when (< i size)
        (bytevector-u8-set! bv i (logand x #xff))
        (loop (+ i 1)
              (logand (+ (* x 1103515245) 12345) #x7fffffff))))
    bv))

(define (listing file)
  "The metadata of FILE and everything under it, sorted by name: what a
client can observe of a store item on disk."
  (define (entry name file)
    (let* ((st (lstat file))
           (type (stat:type st)))
      (cons `(("name" . ,name)
              ("type" . ,(symbol->string type))
              ("mode" . ,(number->string (logand (stat:perms st) #o7777) 8))
              ("uid" . ,(stat:uid st))
              ("gid" . ,(stat:gid st))
              ("mtime" . ,(stat:mtime st))
              ("nlink" . ,(if (eq? type 'directory) 'null (stat:nlink st)))
              ,@(match type
                  ('regular `(("size" . ,(stat:size st))))
                  ('symlink `(("target" . ,(readlink file))))
                  (_ '())))
            (if (eq? type 'directory)
                (append-map (lambda (e)
                              (entry (string-append name "/" e)
                                     (string-append file "/" e)))
                            (scandir file
                                     (lambda (e)
                                       (not (member e '("." ".."))))
                                     string<?))
                '()))))
  (list->vector (entry "." file)))
