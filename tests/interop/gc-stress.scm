;;; gc-stress.scm -- one participant of the concurrency scenario, where
;;; clients keep adding items and building while collections run in a loop.
;;;
;;; Usage: gc-stress.scm TRANSCRIPT client NAME SECONDS
;;;        gc-stress.scm TRANSCRIPT collector NAME SECONDS
;;;
;;; A client, for SECONDS: adds text items, each referring to the one
;;; before (all temporary roots of its session); every third round builds
;;; a small derivation (busybox `sh') whose output copies and refers to the
;;; newest item, and makes the output a temporary root; every round, in a
;;; short second session, adds an item held by a symlink in gcroots and an
;;; unrooted one (garbage), syncing with the collector (op 13) after
;;; making the link, before closing the session.  Every operation must succeed; at the end every
;;; item it holds must be valid with its files matching its NAR hash.  It
;;; records how many operations it made and the longest any of them took
;;; (`max-wait-ms').  A collector runs collect-garbage in a loop for
;;; SECONDS and records how many collections it made and how many paths
;;; they deleted.

(load (string-append (dirname (current-filename)) "/gc-common.scm"))

(define-values (role name seconds)
  (match (script-arguments)
    ((role name seconds) (values role name (string->number seconds)))
    (_ (error "usage: gc-stress.scm TRANSCRIPT client|collector NAME SECONDS"))))

;; Several participants share the daemon's scratch directory.
(define %counter 0)
(define (scratch-file file)
  (set! %counter (+ 1 %counter))
  (string-append (it-dir) "/work/" name "-" (number->string %counter) "-" file))

(define (now-ms)
  (quotient (* 1000 (get-internal-real-time)) internal-time-units-per-second))

(define deadline (+ (now-ms) (* 1000 seconds)))
(define max-wait-ms 0)
(define operations 0)
(define errors 0)

(define (timed label thunk)
  "Run THUNK, note how long it took; a failure is a failed check."
  (let* ((start (now-ms))
         (o (attempt thunk))
         (took (- (now-ms) start)))
    (set! operations (+ 1 operations))
    (when (> took max-wait-ms) (set! max-wait-ms took))
    (unless (ok? o)
      (set! errors (+ 1 errors))
      (check! label #f o))
    (and (ok? o) (ok-value o))))

(define (client)
  (define s (connect))
  (set-build-options s #:use-substitutes? #f)
  (define bb (add-busybox! s))
  (mkdir-p (gcroots-dir))
  (let loop ((round 0) (prev #f) (temp (list bb)) (rooted '()) (builds 0))
    (if (>= (now-ms) deadline)
        (finish-client! s round temp rooted builds)
        (let* ((tag (string-append name "-" (number->string round)))
               (item (timed "add-text-to-store"
                            (lambda ()
                              (add-text-to-store
                               s (string-append "item-" tag)
                               (string-append tag " after " (or prev "nothing") "\n")
                               (if prev (list prev) '())))))
               (output
                (and item (zero? (modulo round 3))
                     (let ((drv (timed "derivation"
                                       (lambda ()
                                         (sh-derivation
                                          s bb (string-append "copy-" tag)
                                          "mkdir $out; cat $item > $out/copy; echo $item > $out/ref"
                                          #:sources (list item)
                                          #:env-vars `(("item" . ,item)))))))
                       (and drv
                            (timed "build"
                                   (lambda ()
                                     (build-things s (list (drv-file drv)))
                                     (add-temp-root s (derivation->output-path drv))
                                     (derivation->output-path drv)))))))
               (root
                (timed "rooted item"
                       (lambda ()
                         (let* ((p (connect))
                                (r (add-text-to-store p (string-append "rooted-" tag)
                                                      (string-append "rooted " tag "\n")
                                                      '())))
                           (symlink r (string-append (gcroots-dir) "/" tag))
                           ;; A collection may have scanned gcroots before
                           ;; the link was made and not yet read the
                           ;; temporary roots: wait for it to finish before
                           ;; the session lets go of the item, as the
                           ;; daemon's own add-indirect-root does.
                           (raw-operation p 13 (const #t) read-int)
                           (check! "rooted item valid once linked"
                                   (valid-path? p r) r)
                           (add-text-to-store p (string-append "junk-" tag)
                                              (string-append "junk " tag "\n") '())
                           (close-connection p)
                           r)))))
          (loop (+ round 1)
                (or item prev)
                (append (filter identity (list item output)) temp)
                (if root (cons root rooted) rooted)
                (if output (+ builds 1) builds))))))

(define (finish-client! s rounds temp rooted builds)
  (let ((bad-temp (remove (cut present? s <>) temp))
        (bad-rooted (remove (cut present? s <>) rooted)))
    (check! "every temporary root is intact" (null? bad-temp) bad-temp)
    (check! "every gcroots item is intact" (null? bad-rooted)
            (map (lambda (p) (cons p (item-state s p))) bad-rooted)
            (scandir (gcroots-dir)))
    (record! "client"
             `(("rounds" . ,rounds)
               ("operations" . ,operations)
               ("builds" . ,builds)
               ("errors" . ,errors)
               ("held" . ,(+ (length temp) (length rooted)))
               ("broken" . ,(+ (length bad-temp) (length bad-rooted)))))
    (record! "max-wait-ms" max-wait-ms)
    (check! "the client made progress" (> rounds 2) rounds)
    (finish!)))

(define (collector)
  (define s (connect))
  (let loop ((collections 0) (deleted 0))
    (if (>= (now-ms) deadline)
        (begin
          (record! "collector" `(("collections" . ,collections)
                                 ("deleted" . ,deleted)
                                 ("errors" . ,errors)))
          (record! "max-wait-ms" max-wait-ms)
          (check! "the collector made collections" (> collections 1) collections)
          (finish!))
        (let ((paths (timed "collect-garbage"
                            (lambda ()
                              (call-with-values (lambda () (collect-garbage s))
                                (lambda (paths freed) paths))))))
          (if paths
              (loop (+ 1 collections) (+ deleted (length paths)))
              ;; The failure is recorded; stop at once.
              (set! deadline 0))
          (when (zero? deadline)
            (record! "collector" `(("collections" . ,collections)
                                   ("errors" . ,errors)))
            (finish!))))))

(match role
  ("client" (client))
  ("collector" (collector)))
